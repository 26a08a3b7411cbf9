"""Who is asking and what they may do: a static token (`kubetasks dev`, outside a cluster) or Kubernetes RBAC.

With Kubernetes, a request's bearer token is validated with a TokenReview and each action is checked with a
SubjectAccessReview on a `kubetasks.dev` resource in the namespace concerned (the empty namespace, i.e. a
ClusterRoleBinding, for standalone tasks and bulk actions). A trusted authenticating proxy may pass the user
and groups in headers instead, only when their names are configured: otherwise such headers are ignored.

The reviews are plain HTTPS calls (httpx) with the pod's service-account token and CA: the worker package never
imports the Kubernetes client. Answers are cached briefly (`cache_seconds`), keyed by a hash of the token.

Verbs (resource `taskruns` or `schedules`, API group kubetasks.dev):
    view: get, list · retry, cancel (taskruns) · trigger, pause (schedules; pause covers resume)
    create (taskruns: the task manager; schedules) · update (schedules: edit cron / time zone)
    delete, flush (taskruns) · get on taskruns/payload (see args and results when they are hidden)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

GROUP = "kubetasks.dev"
IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Principal:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    all_access: bool = False  # the static token of `kubetasks dev`: may do everything


@dataclass(frozen=True)
class Check:
    verb: str
    resource: str
    namespace: str | None  # None: cluster scope
    subresource: str = ""

    def describe(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f"in namespace {self.namespace!r}" if self.namespace else "at cluster scope"
        return f"{self.verb} {what}.{GROUP} {where}"


class Unauthenticated(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class Forbidden(Exception):
    def __init__(self, principal: Principal, check: Check) -> None:
        super().__init__(f"{principal.user} may not {check.describe()}")
        self.principal = principal
        self.check = check


class AuthUnavailable(Exception):
    """The apiserver could not be asked: a 503, never a silent allow."""


class Authenticator(Protocol):
    mode: str

    def authenticate(self, headers: Mapping[str, str]) -> Principal: ...

    def allowed(self, principal: Principal, check: Check) -> bool: ...


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenAuth:
    """One shared secret; whoever has it may do everything (the local, single-user case)."""

    mode = "token"

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the dashboard token must be at least 16 characters long")
        self.token = token

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        given = bearer(headers)
        if given is None:
            raise Unauthenticated("no bearer token; pass 'Authorization: Bearer <token>' (printed at start)")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unauthenticated("the token is not the dashboard's")
        return Principal("dashboard-token", all_access=True)

    def allowed(self, principal: Principal, check: Check) -> bool:
        return principal.all_access


@dataclass(frozen=True)
class ProxyHeaders:
    """Headers a trusted authenticating proxy sets (e.g. X-Remote-User / X-Remote-Group, as the apiserver's
    request-header authentication); only trusted when configured, and then the dashboard must be reachable
    through that proxy alone."""

    user: str
    groups: str | None = None

    def principal(self, headers: Mapping[str, str]) -> Principal | None:
        user = headers.get(self.user.lower(), "").strip()
        if not user:
            return None
        groups: list[str] = []
        if self.groups:
            for value in headers.get(self.groups.lower(), "").split(","):
                if value.strip():
                    groups.append(value.strip())
        return Principal(user, tuple(groups))


@dataclass(frozen=True)
class ApiServer:
    """Where the apiserver is and how the dashboard itself authenticates to it."""

    url: str
    ca_file: str | None
    token_file: str

    @classmethod
    def in_cluster(cls) -> ApiServer | None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        token = IN_CLUSTER_DIR / "token"
        if not host or not port or not token.exists():
            return None
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", str(IN_CLUSTER_DIR / "ca.crt"), str(token))


@dataclass
class _Cache:
    ttl: float
    entries: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Any) -> Any:
        with self.lock:
            hit = self.entries.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None
            return hit[1]

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            if len(self.entries) > 10_000:
                self.entries.clear()
            self.entries[key] = (time.monotonic() + self.ttl, value)


class KubernetesAuth:
    mode = "kubernetes"

    def __init__(self, apiserver: ApiServer, *, proxy: ProxyHeaders | None = None, cache_seconds: float = 10.0,
                 timeout: float = 5.0, audiences: tuple[str, ...] = ()) -> None:
        self.apiserver = apiserver
        self.proxy = proxy
        self.audiences = audiences
        self._tokens = _Cache(cache_seconds)
        self._reviews = _Cache(cache_seconds)
        verify = ssl.create_default_context(cafile=apiserver.ca_file) if apiserver.ca_file else True
        self._client = httpx.Client(base_url=apiserver.url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # The token file is re-read each time: kubelet rotates projected tokens.
        token = Path(self.apiserver.token_file).read_text().strip()
        try:
            response = self._client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise AuthUnavailable(f"the Kubernetes API could not be reached: {exc}") from exc
        if response.status_code >= 300:
            raise AuthUnavailable(f"the Kubernetes API answered {response.status_code} to {path}: "
                                  f"{response.text[:300]}")
        data: dict[str, Any] = response.json()
        return data

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        if self.proxy is not None:
            found = self.proxy.principal(headers)
            if found is not None:
                return found
        token = bearer(headers)
        if token is None:
            raise Unauthenticated("no bearer token; pass 'Authorization: Bearer <token>', e.g. from "
                                  "`kubectl create token <serviceaccount>`")
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._tokens.get(key)
        if cached is None:
            spec: dict[str, Any] = {"token": token}
            if self.audiences:
                spec["audiences"] = list(self.audiences)
            status = self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}).get("status", {})
            if not status.get("authenticated"):
                cached = Unauthenticated("the token was not accepted by the Kubernetes API"
                                         + (f": {status['error']}" if status.get("error") else ""))
            else:
                user = status.get("user", {})
                extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
                cached = Principal(user.get("username", ""), tuple(user.get("groups") or ()), user.get("uid", ""),
                                   extra)
            self._tokens.put(key, cached)
        if isinstance(cached, Unauthenticated):
            raise cached
        principal: Principal = cached
        return principal

    def allowed(self, principal: Principal, check: Check) -> bool:
        key = (principal, check)
        cached = self._reviews.get(key)
        if cached is not None:
            return bool(cached)
        attributes = {"group": GROUP, "resource": check.resource, "verb": check.verb,
                      "namespace": check.namespace or ""}
        if check.subresource:
            attributes["subresource"] = check.subresource
        spec: dict[str, Any] = {"user": principal.user, "groups": list(principal.groups),
                                "resourceAttributes": attributes}
        if principal.uid:
            spec["uid"] = principal.uid
        if principal.extra:
            spec["extra"] = {k: list(v) for k, v in principal.extra}
        status = self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}).get("status", {})
        allowed = bool(status.get("allowed")) and not status.get("denied")
        self._reviews.put(key, allowed)
        return allowed
