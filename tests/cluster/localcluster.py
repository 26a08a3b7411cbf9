"""A real Kubernetes cluster made of host processes, in the spirit of Kubernetes' hack/local-up-cluster.sh.

etcd + kube-apiserver (tests/apiserver/controlplane.py, with ServiceAccount admission on), then
kube-controller-manager (garbage collector, Deployments, ServiceAccounts, the root CA ConfigMap...),
kube-scheduler, and per node a containerd (CRI, runc) and a kubelet. Everything listens on and talks
to 127.0.0.0/8 only:

- nodes register with ``--node-ip=127.0.0.<n>`` (node 0 is 127.0.0.1); pods run with
  ``hostNetwork: true``, so a pod's IP is its node's loopback address and the kubelet's probes of
  ``podIP:port`` stay on loopback. Several nodes give several hostNetwork pods the same port on
  distinct addresses (the scheduler's host-port rule keeps them apart);
- containerd has a CNI config of the ``loopback`` plugin only (so the node reports NetworkReady), and
  no pod ever gets a pod network;
- images are imported into each containerd with ``ctr -n k8s.io images import`` (archives from
  .ci/images.sh); the sandbox image is a locally built pause image, so nothing is ever pulled.

Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and etcd from
``.ci/controlplane.sh --node`` (cached), containerd/runc/ctr from Debian. Needs root (containers,
cgroups, mounts). No pytest dependency, so it can also run by hand::

    python tests/cluster/localcluster.py    # prints an export KUBECONFIG=... line, Ctrl-C stops it
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apiserver"))

import controlplane
from controlplane import ControlPlane, ControlPlaneError, free_port

REPO_ROOT = controlplane.REPO_ROOT
NODE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "etcd")
HOST_TOOLS = ("containerd", "runc", "ctr", "openssl")
PAUSE_IMAGE = "docker.io/local/pause:kubetasks"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def node_binaries() -> Path | None:
    d = controlplane.cache_dir()
    return d if all(os.access(d / n, os.X_OK) for n in NODE_BINARIES) else None


def build_node_binaries() -> tuple[Path | None, str]:
    """Run `.ci/controlplane.sh --node` (cached after the first build); stderr is inherited for progress."""
    proc = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "controlplane.sh"), "--node"], stdout=subprocess.PIPE,
                          text=True, check=False)
    found = node_binaries()
    return found, "" if found else f".ci/controlplane.sh --node exited {proc.returncode}"


def build_images() -> tuple[list[Path], str]:
    """Run .ci/images.sh: [kubetasks image archive, pause image archive] (cached by content hash)."""
    proc = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "images.sh")], stdout=subprocess.PIPE, text=True,
                          check=False)
    paths = [Path(line) for line in proc.stdout.split()]
    if proc.returncode != 0 or len(paths) != 2 or not all(p.is_file() for p in paths):
        return [], f".ci/images.sh exited {proc.returncode}"
    return paths, ""


def skip_reason() -> str | None:
    """One line saying why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "cluster suite: needs root (containerd, runc, cgroups, mounts)"
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        return f"cluster suite: missing {', '.join(missing)} (apt-get install containerd runc)"
    if not any(Path(d, "loopback").exists() for d in CNI_BIN_DIRS):
        return "cluster suite: no CNI loopback plugin (apt-get install containernetworking-plugins)"
    if shutil.which("dockerd") is None and not os.environ.get("DOCKER_HOST"):
        return "cluster suite: no dockerd to build images (apt-get install docker.io)"
    return None


@dataclass
class Node:
    index: int
    ip: str
    name: str
    workdir: Path
    kubelet_port: int = 0
    healthz_port: int = 0

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        # Unique per cluster (its workdir's name), so two clusters on one machine keep apart.
        return f"/{self.workdir.parent.name}-{self.name}"


@dataclass
class Timings:
    control_plane: float = 0.0
    controllers: float = 0.0
    nodes: float = 0.0
    images: float = 0.0
    ready: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class LocalCluster(ControlPlane):
    """ControlPlane plus controller-manager, scheduler, and `nodes` containerd + kubelet pairs."""

    def __init__(self, images: Sequence[Path] = (), *, nodes: int = 1, ready_timeout: float = 120.0) -> None:
        super().__init__(
            node_binaries(),
            authorization_mode="Node,RBAC",
            disabled_admission_plugins=(),
            start_timeout=120.0,
            extra_apiserver_args=[],  # filled in start(): needs the cert dir
        )
        self.images = list(images)
        self.node_count = nodes
        self.ready_timeout = ready_timeout
        self.nodes: list[Node] = []
        self.timings = Timings()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        # The apiserver reaches kubelets (logs, exec) with the admin client certificate; paths are
        # only known once the workdir exists, so they are resolved lazily by the flag list below.
        self.extra_apiserver_args = [
            "--kubelet-client-certificate=certs/admin.crt",
            "--kubelet-client-key=certs/admin.key",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        super().start()
        self.timings.control_plane = time.monotonic() - began
        try:
            t0 = time.monotonic()
            self._start_controller_manager()
            self._start_scheduler()
            self.timings.controllers = time.monotonic() - t0
            t0 = time.monotonic()
            for i in range(self.node_count):
                ip = "127.0.0.1" if i == 0 else f"127.0.0.{i + 1}"
                node = Node(i, ip, f"node-{i}", self._require_workdir() / f"node-{i}")
                self.nodes.append(node)
                self._start_containerd(node)
            self.timings.nodes = time.monotonic() - t0
            t0 = time.monotonic()
            # One import per node, in parallel: each unpacks into its own containerd's snapshots.
            with concurrent.futures.ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
                for done in [pool.submit(self._import_images, node) for node in self.nodes]:
                    done.result()
            self.timings.images = time.monotonic() - t0
            t0 = time.monotonic()
            # One after the other: every kubelet binds the same fixed device-plugin socket
            # (/var/lib/kubelet/device-plugins/kubelet.sock, not under --root-dir), and two starting at
            # once fail with "bind: address already in use". A later one takes the path over; no test
            # uses device plugins.
            for node in self.nodes:
                self._start_kubelet(node)
                self._wait_nodes_ready([node])
            self.timings.ready = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Delete every pod's containers, stop all processes, unmount and remove state. Idempotent."""
        kubelets = [(n, p) for n, p, _ in self._procs if n.startswith("kubelet")]
        for _name, proc in kubelets:
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in kubelets:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        for node in self.nodes:
            self._remove_containers(node)
        super().stop()  # containerd, scheduler, controller-manager, apiserver, etcd (reverse start order)
        for node in self.nodes:
            self._remove_cgroups(node)
        if self.nodes:
            self._remove_kubelet_iptables()
        if self.workdir is not None:
            self._unmount_under(self.workdir)
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.nodes = []

    # -- helpers -------------------------------------------------------------------------------

    def ctr(self, node: Node, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def _import_images(self, node: Node) -> None:
        for archive in self.images:
            self.ctr(node, "images", "import", str(archive), timeout=300)

    def _start_controller_manager(self) -> None:
        assert self.binaries is not None
        certs = self.cert_dir
        port = free_port()
        log = self.log_file("kube-controller-manager")
        proc = self._spawn("kube-controller-manager", [
            str(self.binaries / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--service-account-private-key-file={certs / 'sa.key'}",
            f"--root-ca-file={certs / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--allocate-node-cidrs=false",
            # Prompt garbage collection and node monitoring: tests wait on both.
            "--concurrent-gc-syncs=5",
            "--node-monitor-grace-period=40s",
            "--controllers=*,-node-ipam-controller",
        ], log)  # fmt: skip
        self._wait_ready("kube-controller-manager", proc, log, lambda: self._probe_https(port))

    def _start_scheduler(self) -> None:
        assert self.binaries is not None
        port = free_port()
        log = self.log_file("kube-scheduler")
        proc = self._spawn("kube-scheduler", [
            str(self.binaries / "kube-scheduler"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--leader-elect=false",
        ], log)  # fmt: skip
        self._wait_ready("kube-scheduler", proc, log, lambda: self._probe_https(port))

    @staticmethod
    def _probe_https(port: int) -> bool:
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _start_containerd(self, node: Node) -> None:
        root = node.workdir / "containerd"
        cni_conf = node.workdir / "cni"
        for d in (root, cni_conf):
            d.mkdir(parents=True, exist_ok=True)
        # NetworkReady needs one valid CNI network; every pod uses the host's network, so it never runs.
        (cni_conf / "10-loopback.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "kubetasks-loopback", "plugins": [{"type": "loopback"}],
        }))  # fmt: skip
        cni_bin = next(d for d in CNI_BIN_DIRS if Path(d, "loopback").exists())
        config = root / "config.toml"
        config.write_text(f"""\
version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
[grpc]
  address = "{node.containerd_socket}"
[ttrpc]
  address = "{root / 'containerd.sock.ttrpc'}"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # Our machines refuse lowering oom_score_adj (runc: "failed to update /proc/self/oom_score_adj:
  # Permission denied" for the kubelet's -998): keep every container at or above containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state per containerd, not the machine-wide /run/containerd/runc.
        Root = "{root / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
""")
        log = self.log_file(f"containerd-{node.name}")
        proc = self._spawn(f"containerd-{node.name}", ["containerd", "--config", str(config)], log)
        self._wait_ready(f"containerd-{node.name}", proc, log,
                         lambda: self.ctr(node, "version", check=False, timeout=5).returncode == 0)

    @staticmethod
    def _make_cgroups(node: Node) -> None:
        """The kubelet wants its --cgroup-root in every v1 hierarchy; cpuset ones start empty, so copy the
        parent's cpus and mems."""
        base = Path("/sys/fs/cgroup")
        for hierarchy in base.iterdir():
            if not hierarchy.is_dir() or hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
                continue
            top = hierarchy / node.cgroup_root.lstrip("/")
            top.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists() and not (top / knob).read_text().strip():
                    (top / knob).write_text((hierarchy / knob).read_text())

    def _start_kubelet(self, node: Node) -> None:
        assert self.binaries is not None
        self._make_cgroups(node)
        node.kubelet_port, node.healthz_port = free_port(), free_port()
        kdir = node.workdir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        config = kdir / "config.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Our machines are cgroup v1 (with a unified mount beside it); recent kubelets refuse that by default.
            "failCgroupV1": False,
            "failSwapOn": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": node.cgroup_root,
            "address": node.ip,
            "port": node.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": node.ip,
            "healthzPort": node.healthz_port,
            "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cert_dir / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # A shared disk, mostly full of other people's files: never evict or GC images for it.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                             "imagefs.available": "0%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerNode": True,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "resolvConf": "",
            "shutdownGracePeriod": "0s",
            "localStorageCapacityIsolation": False,
            "protectKernelDefaults": False,
            "enforceNodeAllocatable": ["pods"],
            "maxPods": 50,
        }, indent=2))  # fmt: skip
        log = self.log_file(f"kubelet-{node.name}")
        self._spawn(f"kubelet-{node.name}", [
            str(self.binaries / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={self.kubeconfig}",
            f"--root-dir={kdir / 'root'}",
            f"--cert-dir={kdir / 'pki'}",
            f"--node-ip={node.ip}",
            f"--hostname-override={node.name}",
            "--v=1",
        ], log)  # fmt: skip

    def _wait_nodes_ready(self, nodes: list[Node]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        kubectl = controlplane.make_kubectl(controlplane.kubectl_binary() or "kubectl", self.kubeconfig)
        last = ""
        while time.monotonic() < deadline:
            for name, proc, _ in self._procs:
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            out = kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode == 0:
                items = json.loads(out.stdout)["items"]
                ready = {
                    n["metadata"]["name"] for n in items
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                }  # fmt: skip
                self._set_node_addresses(kubectl, items)
                if ready >= {n.name for n in nodes}:
                    return
                last = json.dumps([n["status"].get("conditions") for n in items])[-1500:]
            time.sleep(0.5)  # polling interval, bounded by the deadline
        raise ControlPlaneError(f"nodes not Ready after {self.ready_timeout:.0f} s: {last}\n{self.logs()}")

    def _set_node_addresses(self, kubectl: controlplane.Kubectl, items: list[dict[str, object]]) -> None:
        """The kubelet refuses a loopback --node-ip ("failed to validate nodeIP: nodeIP can't be loopback
        address") and then leaves status.addresses alone: set them once, as an admin, and it keeps them.
        Pod IPs of hostNetwork pods, probes, logs and exec all follow this address."""
        by_name = {n.name: n for n in self.nodes}
        for item in items:
            meta, status = item["metadata"], item["status"]
            assert isinstance(meta, dict) and isinstance(status, dict)
            node = by_name.get(str(meta["name"]))
            if node is None or status.get("addresses"):
                continue
            patch = {"status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                              {"type": "Hostname", "address": node.name}]}}
            kubectl("patch", "node", node.name, "--subresource=status", "--type=merge", "-p", json.dumps(patch))

    def _remove_containers(self, node: Node) -> None:
        if not node.containerd_socket.exists():
            return
        with contextlib.suppress(Exception):
            tasks = self.ctr(node, "tasks", "ls", "-q", check=False, timeout=20).stdout.split()
            for task in tasks:
                self.ctr(node, "tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
            for task in tasks:
                for _ in range(50):
                    if self.ctr(node, "tasks", "delete", task, check=False, timeout=10).returncode == 0:
                        break
                    time.sleep(0.1)  # the task has just been killed; give it a moment to exit
            for container in self.ctr(node, "containers", "ls", "-q", check=False, timeout=20).stdout.split():
                self.ctr(node, "containers", "delete", container, check=False, timeout=10)

    @staticmethod
    def _remove_cgroups(node: Node) -> None:
        base = Path("/sys/fs/cgroup")
        for hierarchy in base.iterdir() if base.exists() else ():
            top = hierarchy / node.cgroup_root.lstrip("/")
            if not top.is_dir():
                continue
            # Depth first: a cgroup dir can only be removed once its children are.
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    @staticmethod
    def _remove_kubelet_iptables() -> None:
        """Kubelets add a few host-wide chains (KUBE-FIREWALL drops non-loopback packets to 127.0.0.0/8,
        plus empty canary chains); remove them once no kubelet runs on the machine any more."""
        if subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True, check=False).returncode == 0:
            return
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                continue
            for args in (["-D", "INPUT", "-j", "KUBE-FIREWALL"], ["-D", "OUTPUT", "-j", "KUBE-FIREWALL"],
                         ["-F", "KUBE-FIREWALL"], ["-X", "KUBE-FIREWALL"], ["-X", "KUBE-KUBELET-CANARY"],
                         ["-t", "nat", "-X", "KUBE-KUBELET-CANARY"], ["-t", "mangle", "-X", "KUBE-KUBELET-CANARY"],
                         ["-t", "mangle", "-X", "KUBE-IPTABLES-HINT"]):
                subprocess.run([tool, "-w", "5", *args], capture_output=True, check=False)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        prefix = str(root.resolve())
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts]
        for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


if __name__ == "__main__":
    reason = skip_reason()
    if reason:
        sys.exit(reason)
    found, why = node_binaries(), ""
    if found is None:
        found, why = build_node_binaries()
    if found is None:
        sys.exit(why)
    archives, why = build_images()
    if not archives:
        sys.exit(why)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with LocalCluster(archives, nodes=int(os.environ.get("KUBETASKS_CLUSTER_NODES", "1"))) as cluster:
        print(f"export KUBECONFIG={cluster.kubeconfig}  # ready in {cluster.startup_seconds:.1f} s "
              f"{cluster.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
