"""A real single-node Kubernetes cluster for the end-to-end tests (marker ``cluster``).

``SingleNodeCluster`` extends the test control plane of tests/envtest.py (etcd, kube-apiserver,
kube-controller-manager: same certificates, same flags, plus what a node needs) with:

* containerd from Debian (CRI; ``restrict_oom_score_adj`` because this VM refuses to lower
  ``oom_score_adj``; ``sandbox_image`` = the static pause image built by hack/cluster/build.sh),
* kubelet (cgroup v1 allowed, cgroupfs driver, node IP = the machine's own address),
* kube-scheduler and kube-proxy (iptables: pods reach the ``kubernetes`` Service),
* CNI bridge + host-local on a pod network of its own (bridge ``ktbr0``, 10.244.0.0/24),
* CoreDNS on the bridge address behind the ``kube-dns`` Service (10.0.0.10), serving only
  ``cluster.local`` (nothing is forwarded off the machine),
* the KubeRay operator (on the host, all of KubeRay's vendored CRDs applied).

Network safety: the pod network cannot reach anything but this machine and itself (a FORWARD
rule drops pod traffic to other destinations; no masquerading), and CoreDNS answers only for the
cluster's own names.

``stop()`` tears everything down even after a failed test: pods' containers and shims, the
processes, kubelet's bind mounts and the pods' network namespaces, the ``kubepods`` cgroups,
iptables chains, the bridge and veths, containerd's state, and restores the sysctls it set.

Needs root and the binaries of hack/cluster/build.sh (which also runs hack/envtest/build.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.envtest import (
    DEFAULT_CONTROLLERS,
    REPO_ROOT,
    ControlPlaneError,
    KubeControlPlane,
    _Process,
    _tail,
    wait_until,
)

CLUSTER_CACHE = Path(os.environ.get("KUBETUNE_CLUSTER_DIR", REPO_ROOT / ".cache" / "cluster"))
CLUSTER_BIN = CLUSTER_CACHE / "bin"
BUILD_SCRIPT = REPO_ROOT / "hack" / "cluster" / "build.sh"
KUBERAY_CRD_DIR = REPO_ROOT / "hack" / "kuberay" / "crds"

POD_CIDR = "10.244.0.0/24"
BRIDGE = "ktbr0"
BRIDGE_IP = "10.244.0.1"
CNI_NETWORK = "kubetune-test"
DNS_SERVICE_IP = "10.0.0.10"
PAUSE_IMAGE = "kubetune.local/pause:1"
GUARD_CHAIN = "KUBETUNE-POD-GUARD"
# containerd's content and snapshots persist between sessions (a cache: a 3.6 GB image is not
# unpacked again when unchanged); its state, containers and pods' snapshots do not.
CONTAINERD_ROOT = CLUSTER_CACHE / "containerd-root"

# A node runs more controllers than the bare control plane: endpoints and slices (Services),
# pod GC, daemon/stateful sets (charts), and the node lifecycle (it lifts the not-ready taint a
# kubelet registers its node with).
CLUSTER_CONTROLLERS = DEFAULT_CONTROLLERS + (
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "pod-garbage-collector-controller",
    "daemonset-controller",
    "statefulset-controller",
    "disruption-controller",
    "node-lifecycle-controller",
)

REQUIRED = ("kubelet", "kube-scheduler", "kube-proxy", "coredns", "kuberay-operator")


def missing_prerequisites() -> str:
    """Why this machine cannot run the cluster ("" when it can)."""
    if os.geteuid() != 0:
        return "the single-node cluster needs root (kubelet, containerd, iptables)"
    missing = [n for n in REQUIRED if not os.access(CLUSTER_BIN / n, os.X_OK)]
    if missing or not (CLUSTER_CACHE / "pause.oci.tar").is_file():
        return f"run hack/cluster/build.sh (missing in {CLUSTER_BIN}: {missing or ['pause.oci.tar']})"
    for tool in ("containerd", "ctr", "runc", "iptables"):
        if not shutil.which(tool):
            return f"{tool} not installed: run hack/cluster/build.sh"
    if not Path("/usr/lib/cni/bridge").exists():
        return "CNI plugins missing (/usr/lib/cni): run hack/cluster/build.sh"
    return ""


def node_ip() -> str:
    """The machine's own first global IPv4 address (kubelet rejects a loopback node IP)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True, text=True, check=True,
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[1] != BRIDGE and not fields[1].startswith(("veth", "cni")):
            return fields[3].split("/")[0]
    raise ControlPlaneError(f"no global IPv4 address on this machine:\n{out}")


def _run(*args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _archive_manifest(archive: str | os.PathLike) -> tuple[str, str]:
    """The manifest digest an OCI archive holds (what `ctr images ls` shows once imported) and
    the name `ctr images import` gives it."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        desc = json.load(member)["manifests"][0]
    notes = desc.get("annotations", {})
    return desc["digest"], notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name", "")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


class SingleNodeCluster:
    def __init__(self, startup_timeout: float = 180.0, keep_work_dir: bool | None = None):
        self.startup_timeout = startup_timeout
        if keep_work_dir is None:
            keep_work_dir = os.environ.get("KUBETUNE_CLUSTER_KEEP", "") not in ("", "0", "false")
        self.keep_work_dir = keep_work_dir
        self.node_ip = ""
        self.node_name = ""
        self.plane: KubeControlPlane | None = None
        self.work_dir: Path | None = None
        self.processes: list[_Process] = []
        self.timings: dict[str, float] = {}
        self.containerd_sock: Path | None = None
        self._sysctls: dict[str, str] = {}
        self._netns_before: set[str] = set()
        self._pod_logs_before: set[str] = set()
        self._imported: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "SingleNodeCluster":
        why = missing_prerequisites()
        if why:
            raise ControlPlaneError(why)
        t0 = time.monotonic()
        # On disk, not tmpfs: unpacked images are several GB.
        self.work_dir = Path(tempfile.mkdtemp(prefix="kubetune-cluster-", dir="/var/tmp"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def __enter__(self) -> "SingleNodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _timed(self, name: str, t: float) -> None:
        self.timings[name] = round(time.monotonic() - t, 2)

    def _start(self) -> None:
        wd = self.work_dir
        assert wd is not None
        self.node_ip = node_ip()
        self.node_name = socket.gethostname().lower()
        self._netns_before = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
        self._pod_logs_before = set(os.listdir("/var/log/pods")) if os.path.isdir("/var/log/pods") else set()

        t = time.monotonic()
        self._prepare_host_network()
        self._timed("network", t)

        # The control plane, reachable from pods: the `kubernetes` Service's endpoint is the
        # node address (kube-proxy DNATs 10.0.0.1:443 to it).
        t = time.monotonic()
        self.plane = KubeControlPlane(
            controllers=CLUSTER_CONTROLLERS,
            extra_apiserver_args=[
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.node_ip}",
                "--endpoint-reconciler-type=lease",
                "--kubelet-preferred-address-types=InternalIP",
            ],
            startup_timeout=self.startup_timeout,
        )
        self.plane.start(crds=sorted(KUBERAY_CRD_DIR.glob("*.yaml")))
        self._timed("control-plane", t)
        kubeconfig = self.plane.admin_kubeconfig

        t = time.monotonic()
        self._start_containerd()
        self.import_image(CLUSTER_CACHE / "pause.oci.tar")  # named by its io.containerd.image.name
        self._timed("containerd", t)

        t = time.monotonic()
        self._start_kubelet(kubeconfig)
        self._start_scheduler(kubeconfig)
        self._start_kube_proxy(kubeconfig)
        self._wait_node_ready()
        self._timed("node", t)

        t = time.monotonic()
        self._start_coredns(kubeconfig)
        self._start_kuberay(kubeconfig)
        self._timed("addons", t)

    def stop(self) -> None:
        """Tear everything down; keeps going past errors and reports them at the end."""
        errors: list[str] = []

        def attempt(what, fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # keep cleaning up
                errors.append(f"{what}: {exc}")

        by_name = {p.name: p for p in self.processes}
        for name in ("kuberay-operator", "coredns", "kube-scheduler"):
            if name in by_name:
                attempt(name, by_name[name].stop)
        if "kubelet" in by_name:
            attempt("kubelet", by_name["kubelet"].stop)
        if "containerd" in by_name:
            attempt("pod containers", self._remove_all_containers)
            attempt("containerd", by_name["containerd"].stop)
        attempt("containerd shims", self._kill_shims)
        if "kube-proxy" in by_name:
            attempt("kube-proxy", by_name["kube-proxy"].stop)
            attempt("kube-proxy --cleanup", self._kube_proxy_cleanup)
        self.processes = []
        attempt("mounts", self._unmount_all)
        attempt("netns", self._remove_netns)
        attempt("cgroups", self._remove_cgroups)
        attempt("network", self._restore_host_network)
        attempt("pod logs", self._remove_pod_logs)
        if self.plane is not None:
            attempt("control plane", self.plane.stop)
            self.plane = None
        if self.work_dir is not None:
            if self.keep_work_dir:
                print(f"[cluster] kept work dir {self.work_dir}", file=sys.stderr)
            else:
                attempt("work dir", shutil.rmtree, self.work_dir)
            self.work_dir = None
        if errors:
            raise ControlPlaneError("errors while stopping the cluster: " + "; ".join(errors))

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> _Process:
        assert self.work_dir is not None
        log = self.work_dir / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(("$ " + " ".join(args) + "\n").encode())
        if env is None:
            proc = _Process(name, args, log)
        else:  # _Process has no env parameter: set it around the spawn
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                proc = _Process(name, args, log)
            finally:
                os.environ.clear()
                os.environ.update(saved)
        self.processes.append(proc)
        return proc

    def _wait(self, proc: _Process, what: str, predicate, timeout: float | None = None):
        def check():
            if not proc.alive():
                raise ControlPlaneError(f"{proc.name} exited:\n{_tail(proc.log_path)}")
            return predicate()

        try:
            return wait_until(check, timeout=timeout or self.startup_timeout, interval=0.2, message=what)
        except TimeoutError as exc:
            raise ControlPlaneError(f"{exc}\n{proc.name} log:\n{_tail(proc.log_path)}") from None

    def logs(self, name: str, lines: int = 60) -> str:
        for proc in self.processes:
            if proc.name == name:
                return _tail(proc.log_path, lines)
        return self.plane.logs(name, lines) if self.plane else ""

    # -- host network ---------------------------------------------------------------------

    def _sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        if key not in self._sysctls:
            self._sysctls[key] = _read(path)
        Path(path).write_text(value)

    def _prepare_host_network(self) -> None:
        self._sysctl("net.ipv4.ip_forward", "1")
        if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
            # Pod-to-Service traffic answered by a pod on the same bridge must pass iptables.
            self._sysctl("net.bridge.bridge-nf-call-iptables", "1")
        _run("ip", "link", "add", BRIDGE, "type", "bridge", check=False)
        _run("ip", "addr", "replace", f"{BRIDGE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Pods may reach this machine and each other, nothing else: no masquerading, and
        # forwarded pod traffic to other destinations is dropped.
        _run("iptables", "-N", GUARD_CHAIN, check=False)
        _run("iptables", "-F", GUARD_CHAIN)
        _run("iptables", "-A", GUARD_CHAIN, "-s", POD_CIDR, "!", "-d", POD_CIDR, "-j", "DROP")
        if _run("iptables", "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
            _run("iptables", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    def _restore_host_network(self) -> None:
        while _run("iptables", "-D", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode == 0:
            pass
        _run("iptables", "-F", GUARD_CHAIN, check=False)
        _run("iptables", "-X", GUARD_CHAIN, check=False)
        # kubelet's own chains (kube-proxy --cleanup removes the KUBE-SERVICES family).
        for table in ("filter", "nat", "mangle"):
            rules = _run("iptables-save", "-t", table, check=False).stdout
            for line in rules.splitlines():
                if line.startswith("-A ") and "KUBE-" in line and not line.split()[1].startswith("KUBE-"):
                    _run("iptables", "-t", table, "-D", *line.split()[1:], check=False)
            for line in rules.splitlines():
                if line.startswith(":KUBE-"):
                    chain = line[1:].split()[0]
                    _run("iptables", "-t", table, "-F", chain, check=False)
            for line in rules.splitlines():
                if line.startswith(":KUBE-"):
                    _run("iptables", "-t", table, "-X", line[1:].split()[0], check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys/" + key.replace(".", "/")).write_text(value)
        self._sysctls = {}

    # -- containerd -----------------------------------------------------------------------

    def _start_containerd(self) -> None:
        wd = self.work_dir
        assert wd is not None
        cni_conf = wd / "cni" / "net.d"
        cni_conf.mkdir(parents=True)
        (cni_conf / "10-kubetune.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(wd / "cni" / "ipam"),
                                "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                    ],
                },
                indent=2,
            )
        )
        self.containerd_sock = wd / "containerd" / "containerd.sock"
        config = f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{wd / 'containerd' / 'state'}"
[grpc]
  address = "{self.containerd_sock}"
[ttrpc]
  address = "{self.containerd_sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM refuses to lower oom_score_adj (EPERM even as root): runc fails every sandbox otherwise.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"""
        (wd / "containerd").mkdir(exist_ok=True)
        cfg = wd / "containerd" / "config.toml"
        cfg.write_text(config)
        proc = self._spawn("containerd", ["containerd", "--config", str(cfg), "--log-level", "warn"])
        self._wait(proc, "containerd socket", lambda: self.ctr("version", check=False).returncode == 0, 60)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        assert self.containerd_sock is not None
        return _run("ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args,
                    check=check, timeout=timeout)

    def import_image(self, archive: str | os.PathLike) -> list[str]:
        """``ctr -n k8s.io images import`` an OCI archive (skipped when containerd already holds
        it); returns its names as pods write them (e.g. ``kubetune-trial:dev``).

        A short name (``kubetune-trial:dev``, as buildah exports it) gets its normalised twin
        ``docker.io/library/kubetune-trial:dev``: the CRI looks an image up by that name.
        Renaming instead (tag + remove) leaves the CRI with a stale reference
        ("image docker.io/library/… not found" at CreateContainer). Pods use
        ``imagePullPolicy: Never`` so that nothing is ever pulled from outside.
        """
        want, imported_name = _archive_manifest(archive)

        def refs_of_archive() -> list[str]:
            rows = (line.split() for line in self.ctr("images", "ls", check=False).stdout.splitlines()[1:])
            return [r[0] for r in rows if len(r) >= 3 and r[2] == want and not r[0].startswith("sha256:")]

        refs = refs_of_archive()
        if imported_name not in refs:
            self.ctr("images", "import", "--all-platforms", str(archive), timeout=1800)
            refs = refs_of_archive()
        for ref in refs:
            if "/" not in ref:
                normalised = "docker.io/library/" + ref
                if normalised not in refs:
                    self.ctr("images", "tag", "--force", ref, normalised)
        refs = [r for r in refs if not r.startswith("docker.io/library/")]
        self._forget_replaced_images()
        self._imported.update(refs)
        return refs

    def _forget_replaced_images(self) -> None:
        """An image replaced by a newer archive under the same name stays alive through the
        `sha256:<id>` name the CRI gives every image: remove those names, so that containerd's
        garbage collector frees the old layers (several GB per trial image)."""
        rows = [line.split() for line in self.ctr("images", "ls", check=False).stdout.splitlines()[1:]]
        named = {r[2] for r in rows if len(r) >= 3 and not r[0].startswith("sha256:")}
        orphans = [r[0] for r in rows if len(r) >= 3 and r[0].startswith("sha256:") and r[2] not in named]
        if orphans:
            self.ctr("images", "rm", *orphans, check=False)

    def _remove_all_containers(self) -> None:
        if self.containerd_sock is None or not self.containerd_sock.exists():
            return
        tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=60).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=30)
        for task in tasks:
            self.ctr("tasks", "delete", "-f", task, check=False, timeout=30)
        containers = self.ctr("containers", "ls", "-q", check=False, timeout=60).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False, timeout=120)

    def _kill_shims(self) -> None:
        """Shims started by our containerd (its socket path is on their command line)."""
        if self.containerd_sock is None:
            return
        marker = str(self.containerd_sock).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmd and marker in cmd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    # -- kubelet, scheduler, kube-proxy -----------------------------------------------------

    def _start_kubelet(self, kubeconfig: Path) -> None:
        wd = self.work_dir
        assert wd is not None and self.plane is not None
        root = wd / "kubelet"
        root.mkdir()
        resolv = wd / "resolv.conf"  # pods with dnsPolicy Default get no outside resolver
        resolv.write_text(f"nameserver {DNS_SERVICE_IP}\n")
        port, healthz = _free_port(), _free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # The host has cgroup v1 (hybrid): kubelet v1.35 refuses it unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "address": self.node_ip,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "failSwapOn": False,
            # Imported images cannot be pulled again: never garbage-collect them, never evict.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "podLogsDir": str(wd / "pod-logs"),
            "serializeImagePulls": False,
            "registerNode": True,
            "maxPods": 30,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
        }
        cfg = wd / "kubelet-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self._kubelet_healthz = healthz
        proc = self._spawn(
            "kubelet",
            [
                str(CLUSTER_BIN / "kubelet"),
                f"--config={cfg}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={wd / 'kubelet-pki'}",
                f"--node-ip={self.node_ip}",
                f"--hostname-override={self.node_name}",
                "--v=1",
            ],
        )

        def healthy():
            with socket.create_connection(("127.0.0.1", healthz), timeout=1):
                return True

        self._wait(proc, "kubelet healthz", healthy)

    def _start_scheduler(self, kubeconfig: Path) -> None:
        assert self.work_dir is not None
        port = _free_port()
        proc = self._spawn(
            "kube-scheduler",
            [
                str(CLUSTER_BIN / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'scheduler-pki'}",
                "--v=1",
            ],
        )
        self._wait(proc, "kube-scheduler port", lambda: socket.create_connection(("127.0.0.1", port), 1))

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        assert self.work_dir is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.node_name,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{_free_port()}",
            "metricsBindAddress": f"127.0.0.1:{_free_port()}",
            # Leave the host's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }
        cfg = self.work_dir / "kube-proxy-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self._kube_proxy_config = cfg
        proc = self._spawn("kube-proxy", [str(CLUSTER_BIN / "kube-proxy"), f"--config={cfg}", "--v=1"])

        def synced():
            return "KUBE-SERVICES" in _run("iptables-save", "-t", "nat", check=False).stdout

        self._wait(proc, "kube-proxy iptables rules", synced)

    def _kube_proxy_cleanup(self) -> None:
        _run(str(CLUSTER_BIN / "kube-proxy"), "--cleanup", check=False, timeout=60)

    def _wait_node_ready(self) -> None:
        assert self.plane is not None

        def ready():
            status, node = self.plane.request("GET", f"/api/v1/nodes/{self.node_name}")
            if status != 200:
                return False
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True"

        kubelet = next(p for p in self.processes if p.name == "kubelet")
        self._wait(kubelet, f"node {self.node_name} Ready", ready)

    # -- CoreDNS, KubeRay ------------------------------------------------------------------

    def _start_coredns(self, kubeconfig: Path) -> None:
        assert self.work_dir is not None and self.plane is not None
        health = _free_port()
        corefile = self.work_dir / "Corefile"
        # Only the cluster's names; nothing is forwarded off the machine.
        corefile.write_text(
            f""".:53 {{
    bind {BRIDGE_IP}
    errors
    health 127.0.0.1:{health}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} envtest
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        )
        proc = self._spawn("coredns", [str(CLUSTER_BIN / "coredns"), "-conf", str(corefile)])
        self._wait(proc, "coredns health", lambda: socket.create_connection(("127.0.0.1", health), 1))
        # kube-dns: a Service without selector; its endpoint is CoreDNS on the bridge address.
        ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        self._create("/api/v1/namespaces/kube-system/services", {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [{**p, "targetPort": 53} for p in ports]},
        })
        self._create("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", {
            "metadata": {"name": "kube-dns-host",
                         "labels": {"kubernetes.io/service-name": "kube-dns",
                                    "endpointslice.kubernetes.io/managed-by": "kubetune-tests"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}}],
            "ports": ports,
        })

    def _start_kuberay(self, kubeconfig: Path) -> None:
        metrics, probe = _free_port(), _free_port()
        proc = self._spawn(
            "kuberay-operator",
            [
                str(CLUSTER_BIN / "kuberay-operator"),
                f"-metrics-addr=127.0.0.1:{metrics}",
                f"-health-probe-bind-address=127.0.0.1:{probe}",
                "-enable-leader-election=false",
                # It runs on the host: reach the Ray dashboards through the API server's proxy.
                "-use-kubernetes-proxy",
                "-log-stdout-encoder=console",
            ],
            env={"KUBECONFIG": str(kubeconfig)},
        )

        def ready():
            with socket.create_connection(("127.0.0.1", probe), 1):
                return True

        self._wait(proc, "kuberay-operator probe port", ready, 120)

    def _create(self, path: str, body: dict) -> dict:
        assert self.plane is not None
        status, out = self.plane.request("POST", path, body)
        if status not in (200, 201, 409):
            raise ControlPlaneError(f"POST {path}: HTTP {status} {out}")
        return out

    # -- teardown of what kubelet and CNI leave on the host ---------------------------------

    def _unmount_all(self) -> None:
        """Everything mounted under the work dir (kubelet's self bind mount, pods' volumes,
        containerd's rootfs and shm mounts), deepest first."""
        if self.work_dir is None:
            return
        prefix = str(self.work_dir)
        for _ in range(3):
            mounts = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == prefix or point.startswith(prefix + "/"):
                    mounts.append(point)
            if not mounts:
                return
            for point in sorted(mounts, key=len, reverse=True):
                _run("umount", "-l", point, check=False)

    def _remove_netns(self) -> None:
        base = "/var/run/netns"
        if not os.path.isdir(base):
            return
        for name in set(os.listdir(base)) - self._netns_before:
            path = os.path.join(base, name)
            _run("umount", "-l", path, check=False)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _remove_cgroups(self) -> None:
        """kubelet's ``kubepods`` hierarchy in every v1 controller (and the unified one)."""
        for top in Path("/sys/fs/cgroup").iterdir():
            root = top / "kubepods"
            if not root.is_dir():
                continue
            dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, root]:
                for attempt in range(20):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # processes still leaving
                        for pid in _read(str(d / "cgroup.procs")).split():
                            with contextlib.suppress(ProcessLookupError, ValueError):
                                os.kill(int(pid), signal.SIGKILL)
                        time.sleep(0.1)

    def _remove_pod_logs(self) -> None:
        base = "/var/log/pods"
        if os.path.isdir(base):
            for name in set(os.listdir(base)) - self._pod_logs_before:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)

    # -- helpers for tests ----------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None):
        assert self.plane is not None
        return subprocess.run(
            ["kubectl", f"--kubeconfig={self.plane.admin_kubeconfig}", *args],
            capture_output=True, text=True, check=check, timeout=timeout, input=input,
        )


# ---------------------------------------------------------------------------------------------
# pytest: marker and fixtures (loaded through conftest's pytest_plugins)

import pytest  # noqa: E402

# Every cluster test's marks. The first one to run waits for the builds (hack/cluster, hack/images:
# cold, tens of minutes) in its fixtures, which pytest-timeout counts: hence the long timeout; each
# experiment has its own deadline (tests/cluster_flow.py run_on_cluster).
CLUSTER_MARKS = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3 * 3600)]

IMAGES_DIR = Path(os.environ.get("KUBETUNE_IMAGES_DIR", REPO_ROOT / ".cache" / "images"))


def ensure_cluster_binaries(timeout: float = 3 * 3600) -> None:
    """hack/cluster/build.sh: a few seconds when everything is cached; while another run of it (./dev test
    starts one in the background) holds its lock, this waits for that one."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}")


@pytest.fixture(scope="session")
def node_cluster():
    """A running single-node cluster (see the module docstring); torn down at the end."""
    if os.geteuid() != 0:
        pytest.skip("the single-node cluster needs root (kubelet, containerd, iptables)")
    t0 = time.monotonic()
    ensure_cluster_binaries()  # waits for ./dev test's background build (its lock), else builds
    print(f"\n[cluster] hack/cluster/build.sh ready after {time.monotonic() - t0:.1f}s", file=sys.stderr)
    c = SingleNodeCluster()
    t0 = time.monotonic()
    c.start()
    print(f"\n[cluster] node {c.node_name} ({c.node_ip}) Ready in {time.monotonic() - t0:.1f}s "
          f"({c.timings})", file=sys.stderr)
    try:
        yield c
    finally:
        c.stop()


def _import(c: SingleNodeCluster, archive: Path, timeout: float = 3600) -> str:
    """Import an archive of hack/images/build.sh, which may be rewriting it right now: that script
    removes the archive and its `.id` before exporting a new one and writes the `.id` after. An archive
    opened while its `.id` exists and is still the file at that path is whole (an open file survives
    its replacement), so ctr reads it through our descriptor, without waiting for a build to end."""
    t = time.monotonic()
    id_file = archive.with_name(archive.name + ".id")
    while True:
        try:
            fd = os.open(archive, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            if id_file.is_file() and os.fstat(fd).st_ino == os.stat(archive).st_ino:
                break
            os.close(fd)
        if time.monotonic() - t > timeout:
            raise ControlPlaneError(f"{archive} (with {id_file.name}) missing: run hack/images/build.sh")
        time.sleep(2)
    try:
        name = c.import_image(f"/proc/{os.getpid()}/fd/{fd}")[0]
    finally:
        os.close(fd)
    print(f"\n[cluster] {archive.name} in containerd as {name} ({time.monotonic() - t:.1f}s)", file=sys.stderr)
    return name


IMAGES_BUILD_SCRIPT = REPO_ROOT / "hack" / "images" / "build.sh"


def build_images(timeout: float = 3 * 3600) -> float:
    """hack/images/build.sh for both targets (cached and locked: seconds when nothing changed; a cold
    build downloads gigabytes). Whichever test needs an image first builds it, in any test order."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(IMAGES_BUILD_SCRIPT), "operator", "trial"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{IMAGES_BUILD_SCRIPT} failed:\n{proc.stdout[-6000:]}"
    return time.monotonic() - t0


@pytest.fixture(scope="session")
def built_images() -> None:
    print(f"\n[images] hack/images/build.sh operator trial: {build_images():.0f}s", file=sys.stderr)


@pytest.fixture(scope="session")
def trial_image(node_cluster: SingleNodeCluster, built_images) -> str:
    """The trial image (hack/images/build.sh) imported into the cluster's containerd."""
    return _import(node_cluster, IMAGES_DIR / "kubetune-trial.tar")


@pytest.fixture(scope="session")
def operator_image(node_cluster: SingleNodeCluster, built_images) -> str:
    return _import(node_cluster, IMAGES_DIR / "kubetune-operator.tar")
