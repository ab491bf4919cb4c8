"""Fixtures and helpers for running the kubetune operator against the real API server (tests/envtest.py).

The operator runs as a subprocess (`kubetune operator`), exactly as in its Deployment, with the
kubeconfig of a service account that has only the RBAC the Helm chart renders (charts/kubetune through
the real helm, tests/helm.py): the chart's ClusterRole for a cluster-wide install, its Roles for a
namespaced one (`watchNamespaces`); the driver runs as the chart's drivers' service account. A
permission the chart lacks fails the test. A subprocess can also be SIGKILLed at any point and
started again, which is what the restart tests do.

Loaded from tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import base64
import copy
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.envtest import KubeControlPlane, _child_setup_factory, wait_until
from tests.helm import ensure_helm, render

VENV_BIN = Path(sys.executable).parent
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
OPERATOR_NAMESPACE, OPERATOR_SA = "kubetune-system", "kubetune-operator"
DRIVER_SA = "kubetune-driver"
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "tuneexperiments"
LABEL = "kubetune.io/experiment"

# Fast settings for tests; everything else is the operator's default.
TEST_SETTINGS = {
    "KUBETUNE_TRIAL_IMAGE": "kubetune-trial:test",
    "KUBETUNE_METRICS_PORT": "0",
    "KUBETUNE_RECHECK_SECONDS": "1",
    "KUBETUNE_ERROR_BACKOFF_SECONDS": "1",
    "KUBETUNE_RESYNC_SECONDS": "30",
    "KUBETUNE_DRIVER_BACKOFF_LIMIT": "1",
    "KUBETUNE_STATUS_INTERVAL_SECONDS": "1",
    "KUBETUNE_LOG_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- RBAC from the chart (charts/kubetune, `helm template` by the real helm)


def rbac_documents(namespaces: list[str] | None = None, release: str = "kubetune",
                   **values: Any) -> list[dict[str, Any]]:
    """The ServiceAccounts and RBAC the chart renders for release `release` in kubetune-system:
    cluster-wide, or with `namespaces` the namespaced install (Roles there, nothing cluster-wide)."""
    ensure_helm()
    chart_values: dict[str, Any] = {"driverRBAC": {"create": False}, **values}
    if namespaces:
        chart_values["watchNamespaces"] = namespaces
    return [d for d in render(chart_values, namespace=OPERATOR_NAMESPACE, release=release) if d["kind"] in RBAC_KINDS]


def user_role_documents() -> list[dict[str, Any]]:
    """The chart's kubetune-edit / kubetune-view ClusterRoles (aggregated to edit / view)."""
    return [d for d in rbac_documents() if d["metadata"]["name"] in ("kubetune-edit", "kubetune-view")]


def _create(kube: KubeControlPlane, doc: dict[str, Any]) -> None:
    import kubernetes.utils

    with kube.api_client() as client:
        try:
            kubernetes.utils.create_from_dict(client, doc)
        except kubernetes.utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise


def driver_documents(namespace: str) -> list[dict[str, Any]]:
    """The drivers' ServiceAccount, Role and RoleBinding the chart renders into `namespace`."""
    ensure_helm()
    docs = [d for d in render({"driverRBAC": {"namespaces": [namespace]}}, namespace=OPERATOR_NAMESPACE)
            if d["kind"] in RBAC_KINDS and d["metadata"]["name"] == DRIVER_SA]
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"], \
        "the chart lost the driver's ServiceAccount, Role or RoleBinding"
    assert all(d["metadata"]["namespace"] == namespace for d in docs)
    return docs


@pytest.fixture(scope="session")
def operator_kubeconfig(kube: KubeControlPlane, tmp_path_factory) -> Path:
    """The chart's cluster-wide operator RBAC; a kubeconfig of its service account."""
    kube.create_namespace(OPERATOR_NAMESPACE, wait_for_default_sa=False)  # helm install --create-namespace
    for doc in rbac_documents():
        _create(kube, doc)
    path = tmp_path_factory.mktemp("operator") / "operator.kubeconfig"
    return kube.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_SA, path)


def namespaced_operator_kubeconfig(kube: KubeControlPlane, namespaces: list[str], path: Path,
                                   account: str = "kubetune-operator-ns") -> Path:
    """A namespaced install: the chart with `watchNamespaces` (a release of its own, `kubetune-ns`),
    its Roles and RoleBindings in each of `namespaces`, bound to a service account of its own (not the
    cluster-wide one), and no ClusterRole at all."""
    docs = rbac_documents(namespaces, release="kubetune-ns", operator={"serviceAccount": {"name": account}},
                          rbac={"aggregateToDefaultRoles": False})
    assert not [d for d in docs if d["kind"].startswith("Cluster")], "the namespaced chart grants something cluster-wide"
    kube.create_namespace(OPERATOR_NAMESPACE, wait_for_default_sa=False)
    for doc in docs:
        _create(kube, doc)
    return kube.service_account_kubeconfig(OPERATOR_NAMESPACE, account, path)


def rules_review(kube: KubeControlPlane, kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    """What `kubectl auth can-i --list -n NAMESPACE` prints for the kubeconfig's account, as rows."""
    import kubernetes.client
    import kubernetes.config

    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        review = kubernetes.client.AuthorizationV1Api(client).create_self_subject_rules_review(
            {"spec": {"namespace": namespace}})
        rows = []
        for rule in review.status.resource_rules:
            resources = [f"{r}.{g}" if g else r for g in rule.api_groups or [""] for r in rule.resources or []]
            rows.append({"resources": sorted(resources), "names": sorted(rule.resource_names or []), "verbs": sorted(rule.verbs)})
        for rule in review.status.non_resource_rules:
            rows.append({"urls": sorted(rule.non_resource_urls), "verbs": sorted(rule.verbs)})
        return rows
    finally:
        client.close()


def can_i(kube: KubeControlPlane, kubeconfig: Path, verb: str, resource: str, namespace: str, group: str = "") -> bool:
    """`kubectl auth can-i VERB RESOURCE -n NAMESPACE` for the kubeconfig's account."""
    import kubernetes.client
    import kubernetes.config

    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        review = kubernetes.client.AuthorizationV1Api(client).create_self_subject_access_review({"spec": {
            "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace}}})
        return bool(review.status.allowed)
    finally:
        client.close()


def driver_kubeconfig(kube: KubeControlPlane, namespace: str, path: Path) -> Path:
    """The driver's RBAC in `namespace`; a kubeconfig of its service account (what the driver pod gets)."""
    for doc in driver_documents(namespace):
        _create(kube, doc)
    return kube.service_account_kubeconfig(namespace, DRIVER_SA, path)


@pytest.fixture
def driver_rbac(kube, namespace, tmp_path) -> Path:
    """The drivers' ServiceAccount, Role and RoleBinding (the chart's) in the test namespace."""
    return driver_kubeconfig(kube, namespace, tmp_path / "driver.kubeconfig")


# -- the operator process


class OperatorProcess:
    """`kubetune operator` as a subprocess with the service account's kubeconfig."""

    def __init__(self, kubeconfig: Path, log_path: Path, namespaces: list[str] | None, env: dict[str, str]):
        self.kubeconfig, self.log_path, self.namespaces = kubeconfig, log_path, namespaces
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.probe_port = 0
        self.starts = 0

    def start(self, wait: bool = True, **extra_env: str) -> "OperatorProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.probe_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETUNE_", "KUBECONFIG", "RAY_"))}
        env.update(TEST_SETTINGS)
        env.update(self.env)
        env.update(extra_env)
        env.update({"KUBECONFIG": str(self.kubeconfig), "KUBETUNE_PROBE_PORT": str(self.probe_port),
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        cmd = [str(VENV_BIN / "kubetune"), "operator"]
        for ns in self.namespaces or []:
            cmd += ["--namespace", ns]
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {self.starts + 1}: {' '.join(cmd)} {extra_env}\n".encode())
        log.flush()
        # Own session + PDEATHSIG: killed with the test process even when that is SIGKILLed.
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_child_setup_factory(True))
        log.close()
        self.starts += 1
        if wait:
            self.wait_live()
        return self

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator is not live after {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup of any kind."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
def operator_factory(kube, operator_kubeconfig, tmp_path) -> Iterator:
    """start_operator(namespaces=[...] or None for cluster-wide, **env) -> a running OperatorProcess.

    `kubeconfig=` runs it with another account (e.g. namespaced_operator_kubeconfig()).
    """
    started: list[OperatorProcess] = []

    def start(namespaces: list[str] | None, wait: bool = True, kubeconfig: Path | None = None, **env: str) -> OperatorProcess:
        op = OperatorProcess(kubeconfig or operator_kubeconfig, tmp_path / f"operator-{len(started)}.log", namespaces, env)
        started.append(op)
        return op.start(wait=wait)

    yield start
    for op in started:
        op.stop()
    if os.environ.get("KUBETUNE_TEST_OPERATOR_LOGS"):
        for op in started:
            print(f"\n----- {op.log_path}\n{op.tail(400)}")


# -- TuneExperiments and their children


def experiment_manifest(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A small valid TuneExperiment (the quickstart's trainable on digits)."""
    spec: dict[str, Any] = {
        "trainable": {"entrypoint": "kubetune_trials.mnist:train", "config": {"dataset": "digits"}},
        "objective": {"metric": "mean_accuracy", "mode": "max"},
        "parameters": {"lr": {"loguniform": {"min": 0.001, "max": 0.3}},
                       "momentum": {"uniform": {"min": 0.1, "max": 0.9}}},
        "search": {"algorithm": "random", "numSamples": 2, "seed": 1},
        "stop": {"maxIterations": 2},
        "rayCluster": {"head": {"cpu": "1", "memory": "2Gi"},
                       "workerGroups": [{"name": "cpu", "replicas": 1, "cpu": "2", "memory": "4Gi"}]},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TuneExperiment", "metadata": {"name": name}, "spec": spec}


class Cluster:
    """Short API helpers on the admin client, for test code."""

    def __init__(self, kube: KubeControlPlane, namespace: str):
        import kubernetes.client

        self.kube, self.ns = kube, namespace
        self.client = kube.api_client()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def close(self) -> None:
        self.client.close()

    # experiments
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, manifest)

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, {"spec": spec})

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, PLURAL, name, {"status": status})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {})

    def wait_phase(self, name: str, phase: str, timeout: float = 60, op: OperatorProcess | None = None) -> dict[str, Any]:
        try:
            wait_until(lambda: self.status(name).get("phase") == phase, timeout=timeout, interval=0.2,
                       message=f"{name} to be {phase}")
        except TimeoutError as exc:
            detail = json.dumps(self.status(name), indent=1)
            logs = f"\noperator log:\n{op.tail()}" if op else ""
            raise AssertionError(f"{exc}\nstatus: {detail}{logs}") from None
        return self.status(name)

    # children
    def rayclusters(self, name: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object("ray.io", "v1", self.ns, "rayclusters",
                                                         label_selector=f"{LABEL}={name}")["items"]

    def raycluster(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.custom.get_namespaced_custom_object("ray.io", "v1", self.ns, "rayclusters", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def jobs(self, name: str) -> list[dict[str, Any]]:
        items = self.batch.list_namespaced_job(self.ns, label_selector=f"{LABEL}={name}").items
        return [self.client.sanitize_for_serialization(j) for j in items]

    def configmaps(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_config_map(self.ns, label_selector=f"{LABEL}={name}").items
        return [self.client.sanitize_for_serialization(c) for c in items]

    def children(self, name: str) -> dict[str, int]:
        return {"RayCluster": len(self.rayclusters(name)), "Job": len(self.jobs(name)),
                "ConfigMap": len(self.configmaps(name))}

    def driver_pods(self, job: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(self.ns, label_selector=f"batch.kubernetes.io/job-name={job}").items
        return [self.client.sanitize_for_serialization(p) for p in items]

    def wait_driver_pod(self, job: str, timeout: float = 30, exclude: set[str] = frozenset()) -> dict[str, Any]:
        """The (newest) pod the Job controller created for `job`, not one of `exclude`."""
        def found():
            pods = [p for p in self.driver_pods(job) if p["metadata"]["name"] not in exclude
                    and not p["metadata"].get("deletionTimestamp")]
            return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])[-1] if pods else None

        return wait_until(found, timeout=timeout, interval=0.2, message=f"a pod of Job {job}")

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [self.client.sanitize_for_serialization(e) for e in items]

    # playing KubeRay
    def mark_raycluster(self, name: str, state: str = "ready", reason: str | None = None) -> None:
        """Write a RayCluster's status as KubeRay would: state ready (HeadPodReady) or failed."""
        status: dict[str, Any] = {"state": state, "observedGeneration": 1}
        if state == "ready":
            status["conditions"] = [
                {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady", "message": "",
                 "lastTransitionTime": now()},
                {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReadyFirstTime",
                 "message": "All Ray Pods are ready for the first time", "lastTransitionTime": now()},
            ]
            status["head"] = {"serviceName": f"{name}-head-svc"}
        if reason:
            status["reason"] = reason
        self.custom.patch_namespaced_custom_object_status("ray.io", "v1", self.ns, "rayclusters", name, {"status": status})

    def create_ray_token_secret(self, rc_name: str, token: str) -> None:
        """The Secret KubeRay creates for authOptions.mode=token (named after the RayCluster)."""
        from kubernetes.client.rest import ApiException

        body = {"metadata": {"name": rc_name}, "stringData": {"auth_token": token}}
        try:
            self.core.create_namespaced_secret(self.ns, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def play_kuberay_pod(self, rc_name: str, component: str = "head", waiting: tuple[str, str] | None = None) -> str:
        """Create the pod KubeRay would make from a RayCluster's template; optionally a stuck container."""
        rc = self.raycluster(rc_name)
        template = (rc["spec"]["headGroupSpec"] if component == "head" else rc["spec"]["workerGroupSpecs"][0])["template"]
        name = f"{rc_name}-{component}-{uuid.uuid4().hex[:5]}"
        pod = {"metadata": {**copy.deepcopy(template["metadata"]), "name": name}, "spec": copy.deepcopy(template["spec"])}
        self.core.create_namespaced_pod(self.ns, pod)
        if waiting:
            container = pod["spec"]["containers"][0]["name"]
            self.core.patch_namespaced_pod_status(name, self.ns, {"status": {"phase": "Pending", "containerStatuses": [{
                "name": container, "image": pod["spec"]["containers"][0]["image"], "imageID": "", "ready": False,
                "restartCount": 0, "state": {"waiting": {"reason": waiting[0], "message": waiting[1]}}}]}})
        return name

    def terminate_driver_pod(self, pod: str, exit_code: int, message: str) -> None:
        """Play the kubelet for a driver pod that exits, with the termination message it wrote."""
        now_ = now()
        self.core.patch_namespaced_pod_status(pod, self.ns, {"status": {
            "phase": "Failed" if exit_code else "Succeeded",
            "containerStatuses": [{"name": "driver", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message,
                                                            "startedAt": now_, "finishedAt": now_}}}]}})

    def secret_value(self, name: str, key: str) -> str:
        secret = self.core.read_namespaced_secret(name, self.ns)
        return base64.b64decode(secret.data[key]).decode()


@pytest.fixture
def cluster(kube, namespace) -> Iterator[Cluster]:
    c = Cluster(kube, namespace)
    yield c
    c.close()


@contextlib.contextmanager
def local_ray_head(token: str, num_cpus: int = 2) -> Iterator[str]:
    """A Ray head on this machine standing in for the RayCluster; stops only its own processes.

    Its own temp dir keeps `ray start` from writing /tmp/ray/ray_current_cluster, where any other
    `ray.init()` on this machine would find (and join) it; its own ports and token likewise. The dir
    is short: Ray's socket paths must fit in 107 bytes.
    """
    tmp_dir = Path(tempfile.mkdtemp(prefix="kt-ray-", dir="/tmp"))
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
           "--disable-usage-stats", f"--temp-dir={tmp_dir}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=false", f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
    # `ray start` returns once its daemons run; they stay in its process group (own session), which is
    # what we kill at the end: no `ray stop`, which would stop every Ray on the machine.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{out[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        try:
            _kill_group(proc.pid)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _group_members(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _kill_group(pgid: int, timeout: float = 20, signum: int = signal.SIGTERM) -> None:
    """Stop every process of one process group (SIGTERM, then SIGKILL); fail if any survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _group_members(pgid)
    assert not left, f"processes of group {pgid} survived SIGKILL: {left}"
