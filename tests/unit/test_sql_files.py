"""The worker's named queries: every block says why, and only the composed ones hold a `{slot}`."""

from __future__ import annotations

import re
from importlib import resources

from kubetasks.worker import db, protocol, queries

# Queries whose text has a slot filled with psycopg.sql in Python: the rest run as written.
COMPOSED = {"task_list": {"filters"}, "task_list_merge": {"branches"}, "task_delete_matching": {"filters"},
            "channel_listen": {"channel"}}


def test_every_query_block_has_a_reason() -> None:
    folder = resources.files("kubetasks.worker.sql")
    for filename in queries.QUERY_FILES:
        for line in (folder / filename).read_text().splitlines():
            if re.match(r"^-- [a-z_]+:", line):
                name, _, why = line[3:].partition(":")
                assert "_" in name and len(why.strip()) > 10, f"{filename}: {line!r}"


def test_only_composed_queries_have_slots() -> None:
    for name, sql in queries.all_queries().items():
        slots = set(re.findall(r"\{([a-z_]+)\}", sql))
        assert slots == COMPOSED.get(name, set()), name


def test_listen_names_a_protocol_channel_as_an_identifier() -> None:
    assert db.listen(protocol.QUEUE_CHANNEL).as_string(None) == f'LISTEN "{protocol.QUEUE_CHANNEL}"'


def test_the_limited_claim_marks_and_claims_tasks_word_for_word_as_task_claim() -> None:
    # Only which tasks to take differs: how an attempt is claimed and marked alive has one definition, so a
    # change to task_claim's UPDATE fails here until task_claim_limited follows it.
    claim, limited = queries.get("task_claim"), queries.get("task_claim_limited")
    update = claim[claim.index("\n), claimed AS ("):]
    assert "FROM candidates" in update and limited.endswith(update)
