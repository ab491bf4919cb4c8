"""`kubetune driver`: the driver pod's entrypoint on a cluster.

It reads the experiment the operator mounted (the normalised TuneExperiment as JSON or YAML),
connects to the RayCluster (RAY_ADDRESS), runs or resumes the search, and patches the
TuneExperiment's `status.trials`, `status.progress` and `status.bestTrial` while it runs
(rate-limited). The operator owns phase and conditions. Exit codes (kubetune.api.exitcodes): 0
succeeded, 2 bad or infeasible spec, 3 every trial failed, 130/143 interrupted by SIGINT/SIGTERM (state
and results saved), 1 a crash; a driver whose pod is replaced resumes from storage. The reason goes,
as one line, to the pod's termination message file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from kubetune.api import SpecError, exitcodes
from kubetune.api.load import load_experiment, load_spec, read_documents
from kubetune.api.spec import API_GROUP, API_VERSION, PLURAL, TuneExperiment
from kubetune.tune.signals import Interrupted, StopSignals, exit_code
from kubetune.tune.storage import json_safe
from kubetune.tune.tracking import Snapshot

log = logging.getLogger("kubetune.driver")

# Set by the operator on the driver Job (see kubetune.controller.builders.build_driver_job).
JOIN_ENV = "KUBETUNE_JOIN_RAY_CLUSTER"
STATUS_INTERVAL_ENV = "KUBETUNE_STATUS_INTERVAL"
JOIN_TIMEOUT_ENV = "KUBETUNE_JOIN_TIMEOUT"
# Where the one-line reason goes (the pod's terminationMessagePath); overridable for tests.
TERMINATION_MESSAGE_ENV = "KUBETUNE_TERMINATION_MESSAGE_PATH"


def write_termination_message(message: str) -> None:
    """One line saying why the driver stopped, for the pod's terminated state (and the operator's status)."""
    path = os.environ.get(TERMINATION_MESSAGE_ENV)
    if not path:
        # Kubernetes mounts this file into every container; elsewhere (a laptop, as root) /dev is no place for it.
        path = exitcodes.TERMINATION_MESSAGE_PATH
        if not os.access(path, os.W_OK):
            return
    elif not os.access(os.path.dirname(path) or ".", os.W_OK):
        return
    line = " ".join(message.split())[:1000]  # Kubernetes keeps at most 4 KiB of it
    try:
        with open(path, "w") as fh:
            fh.write(line + "\n")
    except OSError:
        pass


def status_fields(snapshot: Snapshot, results_uri: str | None = None) -> dict[str, Any]:
    """The part of the status the driver owns, from a snapshot."""
    counts = snapshot.counts
    best = snapshot.best
    status: dict[str, Any] = {
        "trials": dict(counts),
        "progress": f"{snapshot.done}/{counts['total']}",
    }
    if best is not None:
        status["bestTrial"] = {
            "id": best.id, "config": best.config, "metric": best.metric,
            "iteration": best.iteration, "checkpoint": best.checkpoint,
        }
    if results_uri:
        status["resultsUri"] = results_uri
    return json_safe(status)  # the API server refuses inf and NaN


class StatusPatcher:
    """Patches the TuneExperiment's status subresource, at most every `interval_s` seconds."""

    def __init__(self, name: str, namespace: str, interval_s: float = 5.0):
        from kubetune.tune.kube_status import connect

        self.api = connect()
        self.name, self.namespace, self.interval_s = name, namespace, interval_s
        self._last = 0.0
        self._last_body: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, snapshot: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self.patch(status_fields(snapshot))

    def patch(self, status: dict[str, Any]) -> None:
        if status == self._last_body:
            return
        with self._lock:
            try:
                self.api.patch_status(API_GROUP, API_VERSION, self.namespace, PLURAL, self.name, status)
                self._last_body = status
            except Exception as exc:  # the search must go on when the API server is briefly away
                log.warning("could not patch the status of %s/%s: %s", self.namespace, self.name, exc)


class RayNode:
    """This pod as a Ray node without CPUs or GPUs, joined to the cluster at `address` while the driver runs.

    A Ray driver needs a raylet on its own machine: `ray.init(address=<head>:6379)` from a pod that is not
    a Ray node finds none. Joining with no resources keeps trials off the driver pod, keeps the whole Ray
    API (Ray Client would move Tune's controller, and with it the status callbacks, onto the head), and
    lets the driver retry until the head is up, e.g. while a deleted RayCluster is being recreated.
    `ray start --block` watches its processes and, through Ray's reaper, takes them down when it dies.
    """

    READY_LINE = "Ray runtime started."

    def __init__(self, address: str, timeout_s: float = 600.0):
        self.address, self.timeout_s = address, timeout_s
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def ray_cli() -> list[str]:
        beside = os.path.join(os.path.dirname(sys.executable), "ray")
        found = beside if os.access(beside, os.X_OK) else shutil.which("ray")
        return [found] if found else [sys.executable, "-m", "ray.scripts.scripts"]

    def start(self) -> None:
        cmd = self.ray_cli() + ["start", f"--address={self.address}", "--num-cpus=0", "--num-gpus=0",
                                "--block", "--disable-usage-stats"]
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            tail: list[str] = []
            for line in proc.stdout:  # type: ignore[union-attr]
                tail = (tail + [line.rstrip()])[-20:]
                if self.READY_LINE in line:
                    self.proc = proc
                    threading.Thread(target=self._drain, daemon=True).start()
                    log.info("joined the Ray cluster at %s as a node without resources", self.address)
                    return
            proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not join the Ray cluster at {self.address} in {self.timeout_s:g} s:\n"
                                   + "\n".join(tail))
            log.info("the Ray head at %s is not reachable yet (attempt %d); retrying", self.address, attempt)
            time.sleep(min(10.0, 2.0 * attempt))

    def _drain(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            log.debug("ray node: %s", line.rstrip())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # ray start --block drains and stops the node's processes
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def load_driver_experiment(path: str, name: str | None, namespace: str | None) -> TuneExperiment:
    """A TuneExperiment document, or just a spec plus --name (as the operator's ConfigMap holds)."""
    docs = read_documents(path)
    if len(docs) != 1:
        raise SpecError([], path)
    doc = docs[0]
    if isinstance(doc, dict) and "spec" in doc and "apiVersion" in doc:
        return load_experiment(doc, path)
    spec = load_spec(doc, path)
    if not name:
        raise SpecError([], f"{path}: --name is required when the file holds only a spec")
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return TuneExperiment.model_validate({
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TuneExperiment", "metadata": metadata,
        "spec": spec.dump(),
    })


def version_skew_hint(exc: SpecError) -> str:
    """Why a spec the operator validated has fields this driver does not know, and what to do.

    Not ignored: a field the driver does not know may change what the search does (the operator keeps
    the ones only it reads, e.g. spec.pods, out of spec.json, so those never get here).
    """
    if not any(issue.message.startswith("unknown field") for issue in exc.issues):
        return ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        this = f"kubetune {version('kubetune')}"
    except PackageNotFoundError:
        this = "kubetune"
    return (f"\nThis driver ({this}) does not know these fields: if the operator wrote the spec, the trial "
            "image is older than the operator; upgrade them together (README, Upgrade)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code, message = _main(args)
    write_termination_message(message)
    if code != exitcodes.OK:
        print(f"kubetune driver: {message}", file=sys.stderr)
    return code


def _main(args: argparse.Namespace) -> tuple[int, str]:
    """Run the driver; (exit code, one line saying why it stopped)."""
    from kubetune.tune.driver import run_experiment
    from kubetune.tune.storage import StorageError

    try:
        experiment = load_driver_experiment(args.spec, args.name, args.namespace)
    except SpecError as exc:
        return exitcodes.BAD_SPEC, exc.render() + version_skew_hint(exc)
    name = experiment.metadata.name
    namespace = args.namespace or experiment.metadata.namespace or "default"
    interval = float(os.environ.get(STATUS_INTERVAL_ENV) or 5.0)
    patcher = None
    if args.patch_status:
        from kubetune.tune.kube_status import KubeConfigError

        try:
            patcher = StatusPatcher(name, namespace, interval_s=interval)
        except KubeConfigError as exc:
            return exitcodes.CRASHED, f"--patch-status: cannot reach the Kubernetes API: {exc}"

    def progress_line(snapshot: Snapshot) -> None:
        from kubetune.tune.progress import summary_line

        for text in snapshot.warnings[getattr(progress_line, "warned", 0):]:
            log.warning(text)
        progress_line.warned = len(snapshot.warnings)  # type: ignore[attr-defined]
        now = time.monotonic()
        if now - getattr(progress_line, "last", 0.0) >= 10:
            progress_line.last = now  # type: ignore[attr-defined]
            log.info(summary_line(snapshot))

    sinks = [progress_line] + ([patcher] if patcher else [])
    from kubetune.tune.telemetry import serve_from_env

    serve_from_env(log.warning)  # driver and trial metrics, on the driver pod's port named `metrics`
    node = None
    address = args.address or os.environ.get("RAY_ADDRESS")
    with StopSignals() as signals:  # a signal while joining the Ray cluster ends the driver with 130 / 143 too
        try:
            if _truthy(os.environ.get(JOIN_ENV)) and address and not address.startswith("ray://"):
                node = RayNode(address, timeout_s=float(os.environ.get(JOIN_TIMEOUT_ENV) or 600))
                try:
                    node.start()
                except RuntimeError as exc:
                    return exitcodes.CRASHED, str(exc)
            outcome = run_experiment(experiment, sinks=sinks, address=args.address,
                                     verbose=getattr(args, "verbose", False))
            signals.phase = "after"  # the search has ended and saved; a late signal only shortens the clean-up
        except SpecError as exc:
            return exitcodes.BAD_SPEC, exc.render()
        except StorageError as exc:
            return exitcodes.CRASHED, str(exc)
        except Interrupted as exc:
            return exit_code(exc.signum), f"interrupted by {exc} before the search started; the next start resumes"
        finally:
            if node is not None:
                import ray

                ray.shutdown()  # disconnect before the node this driver runs on goes away
                node.stop()
    if patcher:
        patcher.patch(status_fields(outcome.snapshot, outcome.results_uri))
    print(json.dumps({"status": outcome.status, "message": outcome.message, "results": outcome.results_uri}))
    log.info("experiment %s %s: %s", name, outcome.status, outcome.message)
    return outcome.exit_code, f"{outcome.status}: {outcome.message}"
