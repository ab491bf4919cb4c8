"""A real Kubernetes control plane for tests, in the spirit of controller-runtime's envtest.

``KubeControlPlane`` starts, on loopback and random free ports:

* etcd (Debian's ``etcd-server``; data dir on tmpfs when available),
* kube-apiserver (self-signed CA and serving cert, RBAC authorization, a static admin
  token in group ``system:masters``, service-account issuer/signing keys so the
  TokenRequest API works),
* kube-controller-manager (garbage collector, namespace, serviceaccount, job, ... with
  leader election off).

There is no scheduler and no kubelet: pods stay Pending unless a test writes their status.

The kube binaries come from ``hack/envtest/build.sh`` (cached in ``<repo>/.cache/envtest/bin``).

Besides the typed client (``api_client()``), the plane offers: ``admin_kubeconfig`` (file),
``request()`` (raw JSON HTTP), ``apply_crds()``, ``create_namespace()``,
``service_account_kubeconfig()`` (TokenRequest-minted token, for running the operator with
only the RBAC the project ships), ``set_pod_phase()`` (play kubelet: Running / Succeeded /
Failed), ``logs()``, ``rss_kib()``; and the module has ``wait_until()``.

Processes are started with PR_SET_PDEATHSIG, so they die with the test process even when it
is SIGKILLed; a work dir left behind that way is removed by the next ``start()``.

Typical use::

    plane = KubeControlPlane().start(crds=[...])
    try:
        api = kubernetes.client.CoreV1Api(plane.api_client())
        ...
    finally:
        plane.stop()

Environment:

* ``KUBETUNE_ENVTEST_BIN``: directory holding kube-apiserver / kube-controller-manager
  (default ``$KUBETUNE_ENVTEST_DIR/bin``, and that defaults to ``<repo>/.cache/envtest``,
  as in build.sh).
* ``KUBETUNE_ENVTEST_ETCD``: etcd binary (default: ``etcd`` on PATH).
* ``KUBETUNE_ENVTEST_KEEP=1``: keep the work dir (certs, data, logs) after ``stop()``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "hack" / "envtest" / "build.sh"
DEFAULT_BIN_DIR = REPO_ROOT / ".cache" / "envtest" / "bin"

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers run by kube-controller-manager (canonical names; the old short names such as
# "garbagecollector" or "job" are accepted as aliases). There is no kubelet or scheduler, so
# node-, volume-, endpoint- and pod-GC controllers are left out.
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "deployment-controller",
    "replicaset-controller",
)

# Admission plugins on top of kube-apiserver's defaults (which already include
# NamespaceLifecycle, ServiceAccount, ResourceQuota, LimitRanger, PodSecurity, the
# webhook and ValidatingAdmissionPolicy plugins, ...).
DEFAULT_ENABLED_ADMISSION: tuple[str, ...] = ("NamespaceLifecycle", "ServiceAccount")
# No storage classes / ingress classes exist; these plugins would only add noise.
DEFAULT_DISABLED_ADMISSION: tuple[str, ...] = (
    "DefaultStorageClass",
    "DefaultIngressClass",
    "StorageObjectInUseProtection",
    "PersistentVolumeClaimResize",
)

_LIVE_PLANES: "set[KubeControlPlane]" = set()


class ControlPlaneError(RuntimeError):
    """Raised when a component fails to start; the message carries the log's tail."""


# ---------------------------------------------------------------------------------------
# helpers


def _free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


_WORK_DIR_PREFIX = "kubetune-envtest-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) counts as dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _remove_stale_work_dirs(base: Path) -> None:
    """Remove work dirs left behind by test processes that died without ``stop()``
    (their components died with them, through PDEATHSIG)."""
    for d in base.glob(_WORK_DIR_PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)


def _find_etcd() -> str:
    env = os.environ.get("KUBETUNE_ENVTEST_ETCD")
    if env:
        return env
    found = shutil.which("etcd")
    if found:
        return found
    for candidate in ("/usr/bin/etcd", "/usr/local/bin/etcd"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise ControlPlaneError("etcd not found; run hack/envtest/build.sh (installs etcd-server)")


def default_bin_dir() -> Path:
    if os.environ.get("KUBETUNE_ENVTEST_BIN"):
        return Path(os.environ["KUBETUNE_ENVTEST_BIN"])
    if os.environ.get("KUBETUNE_ENVTEST_DIR"):  # build.sh's cache dir
        return Path(os.environ["KUBETUNE_ENVTEST_DIR"]) / "bin"
    return DEFAULT_BIN_DIR


def binaries_present(bin_dir: Path | None = None) -> bool:
    bin_dir = bin_dir or default_bin_dir()
    return all(
        os.access(bin_dir / name, os.X_OK) for name in ("kube-apiserver", "kube-controller-manager")
    ) and (shutil.which("etcd") is not None or "KUBETUNE_ENVTEST_ETCD" in os.environ)


def ensure_binaries(timeout: float = 3600) -> None:
    """Run ``hack/envtest/build.sh`` (a no-op when everything is already cached)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed (rc={proc.returncode}):\n{tail}")


def _child_setup_factory(kill_with_parent: bool):
    """preexec_fn for the components: own session, and (Linux) PR_SET_PDEATHSIG so a
    component is killed when the test process dies, even by SIGKILL.

    PDEATHSIG fires when the *thread* that spawned the child exits: start the control plane
    from a long-lived thread (pytest's main thread is fine).
    """
    prctl = None
    if kill_with_parent and sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
        except Exception:
            prctl = None

    def setup() -> None:  # pragma: no cover - runs in the child
        os.setsid()
        if prctl is not None:
            prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    return setup


def _generate_certs(directory: Path) -> dict[str, Path]:
    """CA, serving cert for 127.0.0.1/localhost and a service-account RSA key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=7)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-envtest-ca")])

    def key_usage(*allowed: str) -> x509.KeyUsage:
        """A KeyUsage with only `allowed` set (its constructor wants all nine flags)."""
        flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{flag: flag in allowed for flag in flags})

    def certificate(subject: x509.Name, key, *, ca: bool, usage: x509.KeyUsage,
                    extensions: Sequence[x509.ExtensionType]) -> x509.Certificate:
        """Issued by the CA (the CA's own is self-signed); basic constraints and key usage critical, the rest not."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    ca_cert = certificate(
        ca_name, ca_key, ca=True, usage=key_usage("digital_signature", "key_cert_sign", "crl_sign"),
        extensions=[x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())],
    )

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), srv_key,
        ca=False, usage=key_usage("digital_signature", "key_encipherment"),
        extensions=[
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.DNSName("kubernetes.default.svc.cluster.local"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            ]),
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
        ],
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = {
        "ca_crt": directory / "ca.crt",
        "ca_key": directory / "ca.key",
        "serving_crt": directory / "apiserver.crt",
        "serving_key": directory / "apiserver.key",
        "sa_key": directory / "sa.key",
        "sa_pub": directory / "sa.pub",
    }
    paths["ca_crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["ca_key"].write_bytes(pem_key(ca_key))
    paths["serving_crt"].write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    paths["serving_key"].write_bytes(pem_key(srv_key))
    paths["sa_key"].write_bytes(pem_key(sa_key))
    paths["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for key in ("ca_key", "serving_key", "sa_key"):
        os.chmod(paths[key], 0o600)
    return paths


def write_kubeconfig(
    path: str | os.PathLike,
    server: str,
    ca_pem: bytes,
    token: str,
    user: str = "user",
    namespace: str | None = None,
    cluster: str = "envtest",
) -> Path:
    """Write a self-contained kubeconfig (CA embedded, bearer token)."""
    context: dict = {"cluster": cluster, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster, "context": context}],
        "current-context": cluster,
        "preferences": {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = ""):
    """Poll ``predicate()`` until it returns a truthy value (returned); raise on timeout.

    Exceptions raised by the predicate are retried; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_exc = None
        except Exception as exc:  # retried until the deadline
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f"; last error: {last_exc!r}" if last_exc else ""
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {message or predicate}{detail}"
            )
        time.sleep(interval)


def _rfc3339(ts: datetime.datetime) -> str:
    return ts.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_status_patch(
    pod, phase: str, exit_code: int | None = None, reason: str | None = None
) -> dict:
    """Status (as a kubelet would write it) for ``pod`` (a V1Pod or dict).

    ``phase`` is "Running", "Succeeded" or "Failed"; for the terminal phases every container
    gets ``state.terminated`` with ``exit_code`` (default 0 for Succeeded, 1 for Failed).
    """
    if not isinstance(pod, dict):
        import kubernetes.client

        pod = kubernetes.client.ApiClient().sanitize_for_serialization(pod)
    now = _rfc3339(datetime.datetime.now(datetime.timezone.utc))
    containers = pod.get("spec", {}).get("containers", [])
    terminal = phase in ("Succeeded", "Failed")
    if exit_code is None:
        exit_code = 0 if phase == "Succeeded" else 1
    statuses = []
    for c in containers:
        st: dict = {
            "name": c["name"],
            "image": c.get("image") or "unknown",
            "imageID": "",
            "restartCount": 0,
            "ready": not terminal,
            "started": not terminal,
        }
        if terminal:
            st["state"] = {
                "terminated": {
                    "exitCode": int(exit_code),
                    "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
        else:
            st["state"] = {"running": {"startedAt": now}}
        statuses.append(st)
    ready = "False" if terminal else "True"
    return {
        "status": {
            "phase": phase,
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        }
    }


# ---------------------------------------------------------------------------------------
# the control plane


class _Process:
    def __init__(self, name: str, args: list[str], log_path: Path, kill_with_parent: bool = True):
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup_factory(kill_with_parent),
            close_fds=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=timeout)
        self._log.close()

    def failure(self, what: str) -> ControlPlaneError:
        rc = self.popen.poll()
        state = f"exited with rc={rc}" if rc is not None else "still running"
        return ControlPlaneError(
            f"{self.name} {what} ({state}); log {self.log_path}:\n{_tail(self.log_path)}"
        )


class KubeControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback."""

    def __init__(
        self,
        bin_dir: str | os.PathLike | None = None,
        etcd: str | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        start_controller_manager: bool = True,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        work_dir: str | os.PathLike | None = None,
        keep_work_dir: bool | None = None,
        verbosity: int = 1,
        kill_with_parent: bool = True,
    ):
        self.bin_dir = Path(bin_dir) if bin_dir else default_bin_dir()
        self.etcd_bin = etcd
        self.controllers = list(controllers)
        self.start_controller_manager = start_controller_manager
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.startup_timeout = startup_timeout
        self._work_dir_arg = work_dir
        if keep_work_dir is None:
            keep_work_dir = os.environ.get("KUBETUNE_ENVTEST_KEEP", "") not in ("", "0", "false")
        self.keep_work_dir = keep_work_dir
        self.verbosity = verbosity
        self.kill_with_parent = kill_with_parent

        self.work_dir: Path | None = None
        self.processes: list[_Process] = []
        self.admin_token = secrets.token_hex(24)
        self.url: str = ""
        self.etcd_url: str = ""
        self.ca_file: Path | None = None
        self.ca_pem: bytes = b""
        self.admin_kubeconfig: Path | None = None
        self.timings: dict[str, float] = {}
        self._certs: dict[str, Path] = {}
        self._kcm_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "KubeControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, crds: Iterable[str | os.PathLike] = ()) -> "KubeControlPlane":
        """Start everything and wait until ready.

        CRDs given here are applied (and Established) *before* kube-controller-manager
        starts, so the garbage collector watches their kinds from the beginning (otherwise
        it notices new kinds only at its periodic re-discovery, every 30 s).
        """
        if self.processes:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        for name in ("kube-apiserver", "kube-controller-manager"):
            if not os.access(self.bin_dir / name, os.X_OK):
                raise ControlPlaneError(
                    f"{self.bin_dir / name} not found; run {BUILD_SCRIPT.relative_to(REPO_ROOT)}"
                )
        etcd_bin = self.etcd_bin or _find_etcd()

        if self._work_dir_arg:
            self.work_dir = Path(self._work_dir_arg)
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
            _remove_stale_work_dirs(Path(base))
            self.work_dir = Path(tempfile.mkdtemp(prefix=_WORK_DIR_PREFIX, dir=base))
            (self.work_dir / "owner.pid").write_text(str(os.getpid()))
        _LIVE_PLANES.add(self)
        try:
            self._start(etcd_bin, list(crds))
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start(self, etcd_bin: str, crds: list) -> None:
        assert self.work_dir is not None
        wd = self.work_dir
        certs_dir = wd / "pki"
        certs_dir.mkdir()
        t = time.monotonic()
        self._certs = _generate_certs(certs_dir)
        self.ca_file = self._certs["ca_crt"]
        self.ca_pem = self.ca_file.read_bytes()
        self.timings["certs"] = time.monotonic() - t

        etcd_client, etcd_peer, api_port, kcm_port = _free_ports(4)
        self.etcd_url = f"http://127.0.0.1:{etcd_client}"
        self.url = f"https://127.0.0.1:{api_port}"
        self._kcm_port = kcm_port

        # static admin token, group system:masters (bypasses RBAC)
        token_file = certs_dir / "tokens.csv"
        token_file.write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        os.chmod(token_file, 0o600)
        self.admin_kubeconfig = write_kubeconfig(
            wd / "admin.kubeconfig", self.url, self.ca_pem, self.admin_token, user="admin"
        )

        # --- etcd
        t = time.monotonic()
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                etcd_bin,
                "--name=default",
                f"--data-dir={wd / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=envtest-{uuid.uuid4().hex[:8]}",
                "--max-request-bytes=10485760",
                "--quota-backend-bytes=4294967296",
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1000",
                "--logger=zap",
                "--log-outputs=stderr",
                "--log-level=warn",
            ],
        )
        self._wait_http(etcd, f"{self.etcd_url}/health", lambda code, body: code == 200)
        self.timings["etcd"] = time.monotonic() - t

        # --- kube-apiserver
        t = time.monotonic()
        admission_enable = ",".join(DEFAULT_ENABLED_ADMISSION)
        admission_disable = ",".join(DEFAULT_DISABLED_ADMISSION)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--etcd-prefix=/registry",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={certs_dir}",
                f"--tls-cert-file={self._certs['serving_crt']}",
                f"--tls-private-key-file={self._certs['serving_key']}",
                f"--client-ca-file={self._certs['ca_crt']}",
                f"--token-auth-file={token_file}",
                "--anonymous-auth=true",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._certs['sa_pub']}",
                f"--service-account-signing-key-file={self._certs['sa_key']}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--enable-admission-plugins={admission_enable}",
                f"--disable-admission-plugins={admission_disable}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--endpoint-reconciler-type=none",
                f"--v={self.verbosity}",
                *self.extra_apiserver_args,
            ],
        )
        self._wait_http(
            apiserver,
            f"{self.url}/readyz",
            lambda code, body: code == 200,
            ca_file=self.ca_file,
            token=self.admin_token,
        )
        self.timings["kube-apiserver"] = time.monotonic() - t

        if crds:
            t = time.monotonic()
            self.apply_crds(crds)
            self.timings["crds"] = time.monotonic() - t

        # --- kube-controller-manager
        if self.start_controller_manager:
            t = time.monotonic()
            kcm_kubeconfig = write_kubeconfig(
                wd / "controller-manager.kubeconfig",
                self.url,
                self.ca_pem,
                self.admin_token,
                user="admin",
            )
            kcm = self._spawn(
                "kube-controller-manager",
                [
                    str(self.bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={kcm_kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={wd / 'kcm-certs'}",
                    "--leader-elect=false",
                    f"--controllers={','.join(self.controllers)}",
                    f"--service-account-private-key-file={self._certs['sa_key']}",
                    f"--root-ca-file={self._certs['ca_crt']}",
                    "--use-service-account-credentials=false",
                    "--cluster-name=kubetune-envtest",
                    "--profiling=false",
                    f"--v={self.verbosity}",
                    *self.extra_controller_manager_args,
                ],
            )
            self._wait_http(
                kcm,
                f"https://127.0.0.1:{kcm_port}/healthz",
                lambda code, body: code == 200,
                insecure=True,
            )
            self.timings["kube-controller-manager"] = time.monotonic() - t
            if self._runs_serviceaccount_controller():
                # The serviceaccount controller creates "default" in every namespace; the
                # ServiceAccount admission plugin rejects pods until it exists.
                t = time.monotonic()
                self.wait_for_service_account("default", "default")
                self.timings["default-serviceaccount"] = time.monotonic() - t

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the work dir."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{proc.name}: {exc}")
        self.processes = []
        if self.work_dir is not None and not self._work_dir_arg:
            if self.keep_work_dir:
                print(f"[envtest] kept work dir {self.work_dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
        _LIVE_PLANES.discard(self)
        if errors:
            raise ControlPlaneError("errors while stopping: " + "; ".join(errors))

    def _runs_serviceaccount_controller(self) -> bool:
        return self.start_controller_manager and bool(
            {"serviceaccount", "serviceaccount-controller", "*"} & set(self.controllers)
        )

    # -- process helpers ----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> _Process:
        assert self.work_dir is not None
        log = self.work_dir / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(("$ " + " ".join(args) + "\n").encode())
        proc = _Process(name, args, log, kill_with_parent=self.kill_with_parent)
        self.processes.append(proc)
        return proc

    def _wait_http(
        self,
        proc: _Process,
        url: str,
        ok,
        ca_file: Path | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        if insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(ca_file))
        else:
            ctx = None
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise proc.failure("exited during startup")
            req = urllib.request.Request(url)
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                    body = resp.read().decode(errors="replace")
                    if ok(resp.status, body):
                        return
                    last = f"HTTP {resp.status}: {body[:500]}"
            except urllib.error.HTTPError as exc:
                body = exc.read().decode(errors="replace")
                last = f"HTTP {exc.code}: {body[-1500:]}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.1)
        err = proc.failure(f"not ready at {url} after {self.startup_timeout:.0f}s")
        raise ControlPlaneError(f"{err}\nlast probe: {last}")

    def logs(self, name: str, lines: int = 100) -> str:
        """Tail of one component's log ("etcd", "kube-apiserver", "kube-controller-manager")."""
        for proc in self.processes:
            if proc.name == name:
                return _tail(proc.log_path, lines)
        return ""

    def rss_kib(self) -> dict[str, int]:
        """Resident set size of each process (KiB), from /proc."""
        out = {}
        for proc in self.processes:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[proc.name] = int(line.split()[1])
            except OSError:
                pass
        return out

    # -- clients ----------------------------------------------------------------------

    def configuration(self, token: str | None = None):
        """A ``kubernetes.client.Configuration`` for admin (or for ``token``)."""
        import kubernetes.client

        cfg = kubernetes.client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.verify_ssl = True
        cfg.api_key = {"authorization": token or self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return cfg

    def api_client(self, token: str | None = None):
        """A new ``kubernetes.client.ApiClient`` (admin unless ``token`` is given)."""
        import kubernetes.client

        return kubernetes.client.ApiClient(self.configuration(token))

    def kubeconfig_env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this plane as admin."""
        return {**os.environ, "KUBECONFIG": str(self.admin_kubeconfig)}

    # -- playing kubelet ----------------------------------------------------------------

    def set_pod_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        exit_code: int | None = None,
        reason: str | None = None,
    ):
        """Write a pod's status like a kubelet would (there is no kubelet here).

        ``phase``: "Running", "Succeeded" or "Failed". Returns the updated V1Pod.
        """
        import kubernetes.client

        with self.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            pod = core.read_namespaced_pod(name, namespace)
            body = pod_status_patch(pod, phase, exit_code=exit_code, reason=reason)
            return core.patch_namespaced_pod_status(name, namespace, body)

    def request(
        self, method: str, path: str, body=None, token: str | None = None, timeout: float = 60
    ) -> tuple[int, dict]:
        """Raw JSON request to the API server (admin unless ``token``): (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"raw": raw.decode(errors="replace")}

    # -- CRDs ---------------------------------------------------------------------------

    def apply_crds(self, paths: Iterable[str | os.PathLike], timeout: float = 60.0) -> list[str]:
        """Create (or replace) the CRDs in the given YAML files; wait until Established.

        Returns the CRD names.
        """
        # KubeRay's CRDs are ~0.5 MB of JSON each: parse YAML with libyaml when available and
        # talk raw HTTP (the generated client spends seconds validating/deserializing them).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        names = []
        for path in paths:
            with open(path) as fh:
                docs = [d for d in yaml.load_all(fh, Loader=loader) if d]
            for doc in docs:
                if doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                doc.setdefault("apiVersion", "apiextensions.k8s.io/v1")
                doc.pop("status", None)
                status, body = self.request("POST", base, doc)
                if status == 409:
                    status, current = self.request("GET", f"{base}/{name}")
                    if status == 200:
                        doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                        status, body = self.request("PUT", f"{base}/{name}", doc)
                if status not in (200, 201):
                    raise ControlPlaneError(
                        f"applying CRD {name} from {path}: HTTP {status} {body}"
                    )
                names.append(name)
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            name = pending[0]
            status, crd = self.request("GET", f"{base}/{name}")
            conds = {
                c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []
            }
            if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} not Established after {timeout}s: {conds}")
            time.sleep(0.05)
        return names

    # -- namespaces / service accounts ------------------------------------------------

    def wait_for_service_account(self, namespace: str, name: str, timeout: float = 30.0) -> None:
        import kubernetes.client
        from kubernetes.client.rest import ApiException

        deadline = time.monotonic() + timeout
        with self.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            while True:
                try:
                    core.read_namespaced_service_account(name, namespace)
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"serviceaccount {namespace}/{name} not created after {timeout}s; "
                        f"kube-controller-manager log:\n{self.logs('kube-controller-manager', 30)}"
                    )
                time.sleep(0.05)

    def create_namespace(
        self, name: str | None = None, labels: dict | None = None, wait_for_default_sa: bool = True
    ) -> str:
        """Create a namespace (random name by default); return its name.

        With ``wait_for_default_sa`` (and the serviceaccount controller running) waits until
        the ``default`` ServiceAccount exists, so pods can be created right away.
        """
        import kubernetes.client
        from kubernetes.client.rest import ApiException

        name = name or f"test-{uuid.uuid4().hex[:10]}"
        with self.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            body = {"metadata": {"name": name, "labels": labels or {}}}
            try:
                core.create_namespace(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        if wait_for_default_sa and self._runs_serviceaccount_controller():
            self.wait_for_service_account(name, "default")
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting (the namespace controller finishes it)."""
        import kubernetes.client
        from kubernetes.client.rest import ApiException

        with self.api_client() as client:
            try:
                kubernetes.client.CoreV1Api(client).delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 24 * 3600, create: bool = True
    ) -> str:
        """Mint a token for a ServiceAccount via the TokenRequest API (creating it if missing)."""
        import kubernetes.client
        from kubernetes.client.rest import ApiException

        with self.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            if create:
                try:
                    core.create_namespace({"metadata": {"name": namespace}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                try:
                    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            req = core.create_namespaced_service_account_token(
                name,
                namespace,
                {"spec": {"audiences": [], "expirationSeconds": int(expiration_seconds)}},
            )
            return req.status.token

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: str | os.PathLike,
        expiration_seconds: int = 24 * 3600,
    ) -> Path:
        """Create (if missing) ServiceAccount ``namespace/name``, mint a token for it and
        write a kubeconfig (default namespace ``namespace``) to ``path``."""
        token = self.service_account_token(namespace, name, expiration_seconds)
        return write_kubeconfig(
            path,
            self.url,
            self.ca_pem,
            token,
            user=f"system:serviceaccount:{namespace}:{name}",
            namespace=namespace,
        )


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net
    for plane in list(_LIVE_PLANES):
        with contextlib.suppress(Exception):
            plane.stop()


if __name__ == "__main__":  # manual smoke test: python -m tests.envtest
    plane = KubeControlPlane()
    plane.start()
    try:
        print("ready:", plane.url, "kubeconfig:", plane.admin_kubeconfig)
        print("timings:", {k: round(v, 2) for k, v in plane.timings.items()})
        print("rss KiB:", plane.rss_kib())
        if len(sys.argv) > 1 and sys.argv[1] == "--wait":
            signal.pause()
    finally:
        plane.stop()
