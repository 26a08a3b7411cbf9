"""The Kubernetes API calls the operator makes outside Kopf's own handling; the only module importing the
`kubernetes` client.

Kopf watches and patches the objects it hands to handlers; this module covers the rest: creating and
pruning a Schedule's TaskRuns, patching status from the database listener (a thread outside any handler),
reading and scaling Deployments, and posting Events. Everything takes and returns plain dicts, so the
callers (and their tests) never see client model classes. Calls are synchronous: they run on Kopf's
handler threads or the listener thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from . import resources

log = logging.getLogger(__name__)
COMPONENT = "kubetasks-operator"
LIST_PAGE = 500  # objects per page of a cluster-wide LIST (the API server's default chunking size)


class WatchExpired(Exception):
    """The resourceVersion a watch started from is compacted away (410 Gone): list again."""


class Kube:
    """One API client; thread-safe for the synchronous calls made here (urllib3 pools connections)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self.api = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.host = os.environ.get("HOSTNAME") or socket.gethostname()

    # -- custom resources ------------------------------------------------------------------------------

    def get(self, kind: resources.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(
                resources.GROUP, resources.VERSION, namespace, kind.plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_objects(self, kind: resources.Kind, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(
            resources.GROUP, resources.VERSION, namespace, kind.plural, label_selector=label_selector)
        return cast(list[dict[str, Any]], cast(dict[str, Any], found).get("items", []))

    def list_everywhere(self, kind: resources.Kind, each: Callable[[dict[str, Any]], None]) -> str:
        """Hand every object of `kind` in the cluster to `each`, a page at a time (not all bodies at once);
        returns the listing's resourceVersion, to watch from."""
        token = None
        while True:
            page = cast(dict[str, Any], self.custom.list_cluster_custom_object(
                resources.GROUP, resources.VERSION, kind.plural, limit=LIST_PAGE, _continue=token))
            for item in page.get("items") or ():
                each(item)
            token = page["metadata"].get("continue")
            if not token:
                return str(page["metadata"]["resourceVersion"])

    def watch_everywhere(self, kind: resources.Kind, resource_version: str, timeout_seconds: int,
                         opened: Callable[[Any], None]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) of every change to `kind` after `resource_version`, bookmarks included, until the
        server ends the watch after `timeout_seconds`. `opened` gets the response, so another thread can end it
        with `shutdown()`. Raises WatchExpired when the version is too old to watch from (list again)."""
        response: Any = self.custom.list_cluster_custom_object(
            resources.GROUP, resources.VERSION, kind.plural, watch=True, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=timeout_seconds, _preload_content=False)
        opened(response)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    code = (event.get("object") or {}).get("code")
                    if code == 410:
                        raise WatchExpired(resource_version)
                    raise ApiException(status=code, reason=(event.get("object") or {}).get("message"))
                yield event["type"], event["object"]
        finally:
            response.release_conn()

    def create(self, kind: resources.Kind, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created); an object already there by that name is returned as is."""
        try:
            made = self.custom.create_namespaced_custom_object(
                resources.GROUP, resources.VERSION, namespace, kind.plural, body)
            return cast(dict[str, Any], made), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get(kind, namespace, body["metadata"]["name"])
        if existing is None:  # deleted between the conflict and the read: let the next pass create it
            raise RuntimeError(f"{kind.kind} {namespace}/{body['metadata']['name']} vanished during creation")
        return existing, False

    def delete(self, kind: resources.Kind, namespace: str, name: str) -> bool:
        try:
            self.custom.delete_namespaced_custom_object(
                resources.GROUP, resources.VERSION, namespace, kind.plural, name,
                body=client.V1DeleteOptions(propagation_policy="Background"))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def patch_status(self, kind: resources.Kind, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch `.status` (None values delete keys); False when the object is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                resources.GROUP, resources.VERSION, namespace, kind.plural, name, {"status": status})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # -- Deployments -----------------------------------------------------------------------------------

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], self.api.sanitize_for_serialization(found))  # type: ignore[no-untyped-call]

    def get_scale(self, namespace: str, name: str) -> int | None:
        """The Deployment's `/scale` replicas, or None when it does not exist."""
        try:
            scale = self.apps.read_namespaced_deployment_scale(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return int(scale.spec.replicas or 0) if scale.spec else 0

    def set_scale(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

    # -- Events ----------------------------------------------------------------------------------------

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about `body` (what `kubectl describe` lists). Never raises: events are
        best-effort, and a failure to post one must not fail the reconciliation that caused it."""
        meta = body.get("metadata") or {}
        now = datetime.now(UTC)
        event = {
            "metadata": {"generateName": f"{meta.get('name', 'kubetasks')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta.get("name"),
                "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": resources.rfc3339(now), "lastTimestamp": resources.rfc3339(now), "count": 1,
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT, "reportingInstance": f"{self.host}-{uuid.getnode():x}",
        }
        try:
            self.core.create_namespaced_event(meta.get("namespace") or "default", event)  # type: ignore[arg-type]
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta.get("namespace"), meta.get("name"),
                        exc.reason)
