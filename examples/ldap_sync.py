"""An LDAP-style synchronisation as a workflow, for `kubetasks dev -f examples/` (schedule: ldap-sync.yaml).

authentik's LDAP source sync splits users into pages (1 000 users / 50 = 20 page tasks), then groups, then
memberships, in that order, with a "meta" task occupying a worker to watch over the steps. Here the scheduled
task starts a workflow and returns at once; each step's lister spawns one task per page into its own step; the
next step starts when the last page of the previous one is final, in the database, exactly once. No task waits
for another, so 20 page tasks need 20 worker slots, not 21.

    kubetasks tasks show <workflow id>     # the tree: users 21/21, groups 5/5, memberships 1/1
"""

from __future__ import annotations

import logging
import math
import time

from kubetasks.worker import workflows
from kubetasks.worker.registry import actor

log = logging.getLogger(__name__)
PAGE_SECONDS = 0.6  # what one page of the pretend directory takes to sync


@actor(name="examples.ldap.sync")
def sync(source: str = "ldap", users: int = 1000, groups: int = 200, page_size: int = 50) -> int:
    """Starts the synchronisation of one source; returns the workflow's id."""
    pages = {"source": source, "page_size": page_size}
    flow = workflows.chain(
        workflows.step("users", workflows.call(list_users, {**pages, "count": users})),
        workflows.step("groups", workflows.call(list_groups, {**pages, "count": groups})),
        workflows.step("memberships", workflows.call(sync_memberships, {"source": source})),
        name=f"ldap-sync {source}", callback=workflows.call(report, {"source": source}))
    return workflows.start(None, flow)


@actor(name="examples.ldap.list_users")
def list_users(source: str, count: int, page_size: int) -> int:
    """Fans out: one task per page of users, in this step."""
    return workflows.spawn(sync_users_page, ({"source": source, "page": page, "page_size": page_size}
                                             for page in range(math.ceil(count / page_size))))


@actor(name="examples.ldap.list_groups")
def list_groups(source: str, count: int, page_size: int) -> int:
    return workflows.spawn(sync_groups_page, ({"source": source, "page": page, "page_size": page_size}
                                              for page in range(math.ceil(count / page_size))))


@actor(name="examples.ldap.users_page")
def sync_users_page(source: str, page: int, page_size: int) -> int:
    time.sleep(PAGE_SECONDS)
    log.info("%s: synced users %d-%d", source, page * page_size, (page + 1) * page_size - 1)
    return page_size


@actor(name="examples.ldap.groups_page")
def sync_groups_page(source: str, page: int, page_size: int) -> int:
    time.sleep(PAGE_SECONDS)
    log.info("%s: synced groups %d-%d", source, page * page_size, (page + 1) * page_size - 1)
    return page_size


@actor(name="examples.ldap.memberships")
def sync_memberships(source: str) -> str:
    time.sleep(PAGE_SECONDS)
    return f"{source}: memberships synced"


@actor(name="examples.ldap.report")
def report(source: str, workflow: int, state: str) -> str:
    """The callback: runs once when the workflow has finished, whatever its state."""
    log.info("%s: synchronisation %d ended %s", source, workflow, state)
    return f"sync {workflow} of {source}: {state}"
