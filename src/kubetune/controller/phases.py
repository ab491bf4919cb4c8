"""Phases and conditions as pure functions: what the observed world means and what to do about it.

`plan(observation)` is the whole decision of one reconcile: the operator-owned part of the status,
the actions on children, and the events to post. It reads nothing and writes nothing, so every
transition is unit-tested without a cluster; `reconcile.py` observes and applies.

| phase        | when                                                                  |
| ------------ | --------------------------------------------------------------------- |
| Pending      | nothing observed yet                                                  |
| Provisioning | the RayCluster exists but is not ready                                |
| Running      | the RayCluster is ready; the driver Job is created / running          |
| Succeeded    | the driver Job completed                                              |
| Failed       | invalid or refused spec, driver failed (final exit code or past its backoff limit), RayCluster failed |
| Suspended    | spec.suspend: RayCluster and driver removed, S3 storage kept          |

The operator owns phase, message, conditions, startTime, completionTime, observedGeneration,
rayClusterName and driverJobName; the driver owns trials, progress, bestTrial and resultsUri.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any, Sequence

from kubetune.api import exitcodes
from kubetune.api.errors import FieldIssue
from kubetune.api.feasibility import infeasible, nodes_from_spec
from kubetune.api.spec import ObjectMeta, TuneExperimentSpec
from kubetune.api.status import ConditionType, Phase, Reason
from kubetune.controller import builders
from kubetune.controller.settings import Settings

# The fields of the status the operator writes (camelCase, as on the wire).
OPERATOR_FIELDS = (
    "phase", "message", "conditions", "rayClusterName", "driverJobName",
    "startTime", "completionTime", "observedGeneration",
)
CONDITION_ORDER = (
    ConditionType.SPEC_VALID, ConditionType.STORAGE_READY, ConditionType.RAY_CLUSTER_READY,
    ConditionType.DRIVER_RUNNING, ConditionType.COMPLETE,
)


# -- what the children say


@dataclass(frozen=True)
class ChildState:
    """missing, deleting, pending, ready/running, succeeded or failed; with a reason and message."""

    kind: str
    reason: str = ""
    message: str = ""

    @property
    def exists(self) -> bool:
        return self.kind != "missing"


def _conditions_by_type(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if isinstance(c, dict)}


def raycluster_state(rc: dict[str, Any] | None) -> ChildState:
    """KubeRay's view: `status.state` (ready/failed/suspended) and, when present, its conditions.

    HeadPodReady is the live signal (state `ready` and RayClusterProvisioned stay set after the head
    restarts); `state: failed` with `status.reason` is KubeRay giving up, e.g. on a quota.
    """
    if rc is None:
        return ChildState("missing")
    if rc.get("metadata", {}).get("deletionTimestamp"):
        return ChildState("deleting", Reason.RAY_CLUSTER_CREATING, "waiting for the deleted RayCluster to go")
    status = rc.get("status") or {}
    state = str(status.get("state") or "").lower()
    name = rc.get("metadata", {}).get("name", "")
    if state == "failed":
        detail = status.get("reason") or "KubeRay marked the RayCluster failed"
        return ChildState("failed", Reason.RAY_CLUSTER_FAILED, f"RayCluster {name} failed: {detail}")
    conds = _conditions_by_type(rc)
    head = conds.get("HeadPodReady")
    if head is not None:
        ready = head.get("status") == "True"
    else:
        ready = state == "ready"
    if ready and state != "suspended":
        return ChildState("ready", Reason.RAY_CLUSTER_READY, f"RayCluster {name} is ready")
    notes = []
    failure = conds.get("RayClusterReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        notes.append(f"{failure.get('reason', '')}: {failure.get('message', '')}".strip(": "))
    if head is not None and head.get("status") != "True" and head.get("message"):
        notes.append(str(head["message"]))
    if state and state not in ("ready",):
        notes.append(f"state {state}")
    detail = f" ({'; '.join(notes)})" if notes else ""
    return ChildState("pending", Reason.RAY_CLUSTER_CREATING, f"waiting for RayCluster {name} to be ready{detail}")


def job_state(job: dict[str, Any] | None, pods: Sequence[dict[str, Any]] = ()) -> ChildState:
    """The driver Job: Complete/SuccessCriteriaMet -> succeeded, Failed/FailureTarget -> failed; running
    when the Job counts a ready pod or one of its `pods` runs the driver container.

    Read from the cluster on every reconcile (a restarted operator knows nothing else): the pod itself
    says so before the Job controller's `ready` count does, and on clusters that keep no such count.
    """
    if job is None:
        return ChildState("missing")
    name = job.get("metadata", {}).get("name", "")
    if job.get("metadata", {}).get("deletionTimestamp"):
        return ChildState("deleting", Reason.DRIVER_STARTING, f"waiting for the deleted driver Job {name} to go")
    conds = _conditions_by_type(job)
    for kind in ("Complete", "SuccessCriteriaMet"):
        if conds.get(kind, {}).get("status") == "True":
            return ChildState("succeeded", Reason.DRIVER_SUCCEEDED, f"driver Job {name} completed")
    for kind in ("Failed", "FailureTarget"):
        c = conds.get(kind, {})
        if c.get("status") == "True":
            detail = ": ".join(p for p in (c.get("reason"), c.get("message")) if p)
            return ChildState("failed", Reason.DRIVER_FAILED, f"driver Job {name} failed" + (f" ({detail})" if detail else ""))
    status = job.get("status") or {}
    failed = int(status.get("failed") or 0)
    retried = f" after {failed} failed pod(s), resuming from storage" if failed else ""
    own_pods = pods_of_job(list(pods), name)
    if int(status.get("ready") or 0) > 0 or any(driver_runs(p) for p in own_pods):
        return ChildState("running", Reason.DRIVER_RUNNING, f"driver Job {name} is running{retried}")
    # Between the driver's exit 0 and the Job's Complete condition the Job counts no ready pod: the
    # driver is done, not starting (seen at the end of every experiment on a real cluster).
    if int(status.get("succeeded") or 0) > 0 or any(driver_exited_ok(p) for p in own_pods):
        return ChildState("running", Reason.DRIVER_RUNNING, f"driver Job {name}: the driver finished, the Job is completing")
    if int(status.get("active") or 0) > 0:
        return ChildState("pending", Reason.DRIVER_STARTING, f"driver pod of Job {name} is starting{retried}")
    return ChildState("pending", Reason.DRIVER_STARTING, f"driver Job {name} created{retried}")


def pod_is_live(pod: dict[str, Any]) -> bool:
    """A pod that may still be running a driver (not finished, not gone)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def driver_runs(pod: dict[str, Any]) -> bool:
    """The kubelet says the pod's driver container runs (phase Running, container state running)."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(cs.get("name") == builders.DRIVER_CONTAINER and (cs.get("state") or {}).get("running") is not None
               for cs in status.get("containerStatuses") or [])


def driver_exited_ok(pod: dict[str, Any]) -> bool:
    """The pod's driver container ended with exit code 0 (or the whole pod Succeeded)."""
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return True
    return any(cs.get("name") == builders.DRIVER_CONTAINER and ((cs.get("state") or {}).get("terminated") or {}).get("exitCode") == 0
               for cs in status.get("containerStatuses") or [])


# Container waiting reasons that do not go away by themselves (the kubelet retries, nothing changes).
STUCK_REASONS = ("CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
                 "InvalidImageName", "RunContainerError", "CrashLoopBackOff")


@dataclass(frozen=True)
class PodProblem:
    component: str  # driver, head or worker
    pod: str
    reason: str  # the kubelet's or the scheduler's, e.g. CreateContainerConfigError, Unschedulable
    message: str

    def __str__(self) -> str:
        if self.reason == UNSCHEDULABLE:
            return f"{self.component} pod {self.pod} cannot be scheduled: {self.message}".rstrip(": ")
        return f"{self.component} pod {self.pod}: {self.reason}: {self.message}".rstrip(": ")


UNSCHEDULABLE = "Unschedulable"


def seconds_between(since: str | None, now: str | None) -> float:
    """Seconds from one RFC 3339 time to another; unknown times count as long ago."""
    try:
        start, end = (datetime.datetime.fromisoformat(str(t).replace("Z", "+00:00")) for t in (since, now))
    except ValueError:
        return float("inf")
    return (end - start).total_seconds()


def pod_problems(pods: list[dict[str, Any]], now: str | None = None, grace: float = 0.0) -> list[PodProblem]:
    """Why live pods of the experiment do not start: stuck containers, no node that fits.

    A pod counts as unschedulable once the scheduler has refused it for `grace` seconds (its PodScheduled
    condition's lastTransitionTime): a node an autoscaler adds, or a pod that goes away, often ends it sooner.
    """
    found = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or not pod_is_live(pod):
            continue
        component = (meta.get("labels") or {}).get(builders.LABEL_COMPONENT, "")
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                found.append(PodProblem(component, meta.get("name", ""), waiting["reason"], waiting.get("message", "")))
                break
        else:
            scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
            if (scheduled.get("status") == "False" and scheduled.get("reason") == UNSCHEDULABLE
                    and seconds_between(scheduled.get("lastTransitionTime"), now) >= grace):
                found.append(PodProblem(component, meta.get("name", ""), UNSCHEDULABLE, scheduled.get("message", "")))
    return found


def failed_create(events: list[dict[str, Any]]) -> str | None:
    """The newest FailedCreate of the Job controller (e.g. Pod Security, a quota): its message."""
    refused = [e for e in events if e.get("reason") == "FailedCreate" and e.get("type") == "Warning"]
    if not refused:
        return None
    newest = max(refused, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime") or "",
                                         int((e.get("metadata") or {}).get("resourceVersion") or 0)))
    return str(newest.get("message") or "FailedCreate")


def driver_exit(pods: list[dict[str, Any]], job_name: str) -> tuple[int | None, str]:
    """The exit code and termination message of the newest finished driver pod of a Job."""
    finished = []
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if job_name not in (labels.get("batch.kubernetes.io/job-name"), labels.get("job-name")):
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == builders.DRIVER_CONTAINER and terminated:
                finished.append((terminated.get("finishedAt") or "", pod["metadata"].get("creationTimestamp") or "",
                                 terminated))
    if not finished:
        return None, ""
    terminated = max(finished, key=lambda f: (f[0], f[1]))[2]
    message = " ".join(str(terminated.get("message") or "").split())  # the last line(s), flattened
    return terminated.get("exitCode"), message[-600:]


EXIT_REASONS = {
    exitcodes.BAD_SPEC: (Reason.SPEC_REJECTED_BY_DRIVER, "the driver rejected the spec (exit code 2)"),
    exitcodes.ALL_TRIALS_FAILED: (Reason.ALL_TRIALS_FAILED, "the search ended with every trial failed (exit code 3)"),
}


def driver_failure(js: "ChildState", pods: list[dict[str, Any]], job_name: str) -> "ChildState":
    """A failed driver Job, with the driver's own reason: its exit code and last words."""
    code, said = driver_exit(pods, job_name)
    reason, what = EXIT_REASONS.get(code, (Reason.DRIVER_FAILED, f"the driver exited with code {code}" if code else ""))
    parts = [js.message] + [p for p in (what, f"driver said: {said}" if said else "") if p]
    return ChildState("failed", reason, "; ".join(parts))


# -- conditions


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str,
                  now: str, generation: int | None) -> list[dict[str, Any]]:
    """Set one condition; lastTransitionTime moves only when its status changes (Kubernetes convention)."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value and old.get("lastTransitionTime") else now
    new = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    return sorted(out, key=lambda c: order.get(c.get("type"), len(order)))


def get_condition(status: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == type_), None)


# -- the decision


@dataclass
class Observation:
    """Everything one reconcile read: the experiment and its children."""

    name: str
    namespace: str
    generation: int | None
    status: dict[str, Any]
    now: str
    spec: TuneExperimentSpec | None = None
    issues: list[FieldIssue] = field(default_factory=list)
    configmap: dict[str, Any] | None = None
    raycluster: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    driver_pods: list[dict[str, Any]] = field(default_factory=list)
    driver_service_account_exists: bool | None = None
    uid: str = ""
    pods: list[dict[str, Any]] = field(default_factory=list)  # the Ray pods (head, workers)
    job_events: list[dict[str, Any]] = field(default_factory=list)  # of the current driver Job while it has no pod


@dataclass
class Action:
    """One change to a child; `reconcile.apply_action` knows each verb."""

    verb: str  # create_/patch_configmap, create_raycluster, patch_raycluster, delete_raycluster, create_job, delete_job, repair
    kind: str
    name: str
    body: dict[str, Any] | None = None


@dataclass
class Plan:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)
    retry_after: float | None = None
    permanent: str | None = None
    backoff: bool = False  # retry_after grows with each retry (a refused write), else a steady re-check


class _Draft:
    """The operator's part of the status, being rewritten; remembers why the phase changed."""

    def __init__(self, obs: Observation):
        self.old = obs.status or {}
        self.status = {k: copy.deepcopy(self.old[k]) for k in OPERATOR_FIELDS if k in self.old}
        self.status.setdefault("conditions", [])
        self.status["observedGeneration"] = obs.generation
        self.now, self.generation = obs.now, obs.generation
        self.events: list[tuple[str, str, str]] = []
        self.phase_reason: str | None = None

    def cond(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(self.status["conditions"], type_, status, reason, message,
                                                  self.now, self.generation)

    def phase(self, phase: str, reason: str, message: str, event_reason: str | None = None) -> None:
        self.status["phase"], self.status["message"] = phase, message
        if self.old.get("phase") != phase:
            kind = "Warning" if phase == Phase.FAILED or reason == Reason.SECRET_NOT_FOUND else "Normal"
            self.events.append((kind, event_reason or reason, f"{phase}: {message}"))

    def finish(self, phase: str, reason: str, message: str) -> None:
        self.phase(phase, reason, message)
        if not self.status.get("completionTime") or self.old.get("phase") != phase:
            self.status["completionTime"] = self.now


def issues_message(issues: list[FieldIssue]) -> str:
    return "; ".join(f"{i.path}: {i.message}" if i.path else i.message for i in issues)


def goal_reached(spec: TuneExperimentSpec, status: dict[str, Any]) -> bool:
    goal, metric = spec.objective.goal, ((status or {}).get("bestTrial") or {}).get("metric")
    if goal is None or not isinstance(metric, (int, float)):
        return False
    return metric >= goal if spec.objective.mode == "max" else metric <= goal


def plan(obs: Observation, settings: Settings) -> Plan:
    """Decide one reconcile. Idempotent: the same observation after the plan is applied plans nothing."""
    d = _Draft(obs)
    if obs.issues or obs.spec is None:
        return _invalid(d, obs.issues, Reason.INVALID_SPEC)
    spec = obs.spec
    for reason, issues in admission_issues(obs.name, spec, settings):
        if issues:
            return _invalid(d, issues, reason)
    d.cond(ConditionType.SPEC_VALID, True, Reason.VALID, "the spec is valid")
    rc_name = builders.ray_cluster_name(obs.name)
    job_name = builders.driver_job_name(obs.name, spec)
    d.status["rayClusterName"] = rc_name
    rc = raycluster_state(obs.raycluster)
    actions: list[Action] = []
    cleanup = builders.delete_ray_cluster_on_finish(spec, settings)

    def delete_cluster() -> None:
        if rc.exists and rc.kind != "deleting":
            actions.append(Action("delete_raycluster", "RayCluster", rc_name))

    if spec.suspend:
        delete_cluster()
        for job in obs.jobs:
            if job_state(job).kind != "deleting":
                actions.append(Action("delete_job", "Job", job["metadata"]["name"]))
        kept = (f"results and checkpoints in {spec.storage.uri} are kept" if spec.storage.is_s3 else
                "local storage went with the driver pod (nothing is kept)")
        message = f"the RayCluster and the driver are removed, {kept}; set spec.suspend to false to resume"
        for type_ in (ConditionType.RAY_CLUSTER_READY, ConditionType.DRIVER_RUNNING, ConditionType.COMPLETE):
            d.cond(type_, False, Reason.SUSPENDED, message)
        d.status["driverJobName"] = job_name
        d.status["completionTime"] = None
        d.phase(Phase.SUSPENDED, Reason.SUSPENDED, message)
        return Plan(d.status, actions, d.events)

    spec_was_valid = (get_condition(d.old, ConditionType.SPEC_VALID) or {}).get("status") == "True"
    if d.old.get("phase") in Phase.FINISHED and spec_was_valid and d.old.get("driverJobName") == job_name:
        # This run is over; nothing restarts it but a spec change that the driver reads (e.g. numSamples).
        if cleanup and rc.exists:
            delete_cluster()
            d.cond(ConditionType.RAY_CLUSTER_READY, False, Reason.RAY_CLUSTER_DELETED,
                   "the RayCluster is deleted now that the experiment is over (spec.cleanup.deleteRayClusterOnFinish)")
        return Plan(d.status, actions, d.events)

    resumed_from = d.old.get("phase") if d.old.get("phase") in (Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED) else None
    if resumed_from in Phase.FINISHED and not spec_was_valid:
        resumed_from = None  # a fixed spec starts the run, it does not resume one
    resume_note = None
    # Only object storage outlives the driver pod: with local storage a resumed run starts over.
    how = "continuing it from storage" if spec.storage.is_s3 else "starting over (local storage was not kept)"
    if resumed_from == Phase.SUSPENDED:
        resume_note = f"resumed: {how}"
    elif resumed_from is not None:
        resume_note = f"the spec changed after the experiment ended ({resumed_from}): {how}"
    if resumed_from is not None:
        d.status["completionTime"] = None
    d.status["driverJobName"] = job_name
    if not d.status.get("startTime"):
        d.status["startTime"] = obs.now

    def phase(p: str, reason: str, message: str) -> None:
        d.phase(p, reason, f"{resume_note}; {message}" if resume_note else message,
                event_reason=Reason.RESUMED if resume_note else None)

    # Storage. The operator cannot read Secrets (least privilege): a missing storage Secret shows when a
    # pod that refers to it cannot start (the kubelet's CreateContainerConfigError).
    storage = spec.storage
    current_pods = pods_of_job(obs.driver_pods, job_name)
    problems = pod_problems(obs.pods + current_pods, obs.now, settings.recheck_seconds)
    if storage.secret_ref:
        lacking = [p for p in problems if p.reason == "CreateContainerConfigError"
                   and f'secret "{storage.secret_ref}" not found' in p.message]
        if lacking:
            missing = lacking[0]
            message = (f"Secret {storage.secret_ref!r} (spec.storage.secretRef) not found in namespace {obs.namespace}: "
                       f"the pods cannot start ({missing}); create it and they start")
            d.cond(ConditionType.STORAGE_READY, False, Reason.SECRET_NOT_FOUND, message)
            problems = [p for p in problems if p not in lacking]
        else:
            d.cond(ConditionType.STORAGE_READY, True, Reason.SECRET_REFERENCED,
                   f"the pods read the S3 credentials from Secret {storage.secret_ref!r} (a missing Secret shows "
                   "here once a pod reports it)")
    elif storage.is_s3:
        d.cond(ConditionType.STORAGE_READY, True, Reason.NO_SECRET_REF,
               "no spec.storage.secretRef: the pods use the credentials of their environment (e.g. a workload identity)")
    else:
        # Marked, not refused: a first try on a cluster needs no bucket, but nothing of it survives the driver pod.
        d.cond(ConditionType.STORAGE_READY, False, Reason.LOCAL_STORAGE,
               f"spec.storage.uri {storage.uri or '(unset)'} is not s3://: results and checkpoints live on the driver "
               "pod's disk and are lost with it (a replaced driver starts the search over); set spec.storage to an "
               "S3 bucket to keep them")

    jobs = {j["metadata"]["name"]: j for j in obs.jobs}
    current = jobs.get(job_name)
    others = [j for n, j in jobs.items() if n != job_name]
    for job in others:  # an earlier run (e.g. before numSamples was raised): stop it before the new one starts
        if job_state(job).kind != "deleting":
            actions.append(Action("delete_job", "Job", job["metadata"]["name"]))
    js = job_state(current, obs.driver_pods)

    # A driver that finished decides the outcome, whatever the cluster does now.
    if js.kind == "succeeded":
        reason = Reason.GOAL_REACHED if goal_reached(spec, d.old) else Reason.BUDGET_EXHAUSTED
        d.cond(ConditionType.DRIVER_RUNNING, False, Reason.DRIVER_SUCCEEDED, js.message)
        d.cond(ConditionType.COMPLETE, True, reason,
               "a trial reached objective.goal" if reason == Reason.GOAL_REACHED else "the search is over")
        _finish_cluster(d, rc, cleanup, delete_cluster)
        d.finish(Phase.SUCCEEDED, Reason.DRIVER_SUCCEEDED, js.message)
        return Plan(d.status, actions, d.events)
    if js.kind == "failed":
        js = driver_failure(js, obs.driver_pods, job_name)
        d.cond(ConditionType.DRIVER_RUNNING, False, js.reason, js.message)
        d.cond(ConditionType.COMPLETE, False, js.reason, js.message)
        _finish_cluster(d, rc, cleanup, delete_cluster)
        d.finish(Phase.FAILED, js.reason, js.message)
        return Plan(d.status, actions, d.events)
    if rc.kind == "failed":
        d.cond(ConditionType.RAY_CLUSTER_READY, False, Reason.RAY_CLUSTER_FAILED, rc.message)
        d.cond(ConditionType.DRIVER_RUNNING, False, Reason.RAY_CLUSTER_FAILED, "the RayCluster failed")
        d.cond(ConditionType.COMPLETE, False, Reason.RAY_CLUSTER_FAILED, rc.message)
        if current is not None and js.kind != "deleting":
            actions.append(Action("delete_job", "Job", job_name))  # a driver without a cluster only burns retries
        if cleanup:
            delete_cluster()
        d.finish(Phase.FAILED, Reason.RAY_CLUSTER_FAILED, rc.message)
        return Plan(d.status, actions, d.events)

    actions += _reconcile_configmap(obs, builders.build_configmap(obs.name, obs.namespace, spec))
    desired_rc = builders.build_raycluster(obs.name, obs.namespace, spec, settings)
    if rc.kind == "missing":
        actions.append(Action("create_raycluster", "RayCluster", rc_name, desired_rc))
        rc = ChildState("pending", Reason.RAY_CLUSTER_CREATING, f"creating RayCluster {rc_name}")
    elif rc.kind != "deleting":
        actions += _reconcile_raycluster(obs, desired_rc)
    if current is not None and js.kind != "deleting":
        actions += _repair(obs, current, "Job")

    ready = rc.kind == "ready"
    retry: float | None = None
    ray_problems = [p for p in problems if p.component in (builders.COMPONENT_HEAD, builders.COMPONENT_WORKER)]
    waiting_pods = "; ".join(map(str, ray_problems[:3]))
    if not ready and ray_problems:
        # KubeRay keeps waiting on these pods; no watch of ours reports them: look again later.
        rc = ChildState(rc.kind, Reason.PODS_NOT_STARTING, f"{rc.message}: {waiting_pods}")
        retry = settings.recheck_seconds
    elif ready and ray_problems:
        # The head is up and trials may run, but a worker (e.g. too big for any node) waits: say which and why.
        rc = ChildState(rc.kind, Reason.PODS_NOT_STARTING, f"{rc.message}, but {waiting_pods}")
        retry = settings.recheck_seconds
    elif not ready and rc.kind == "pending" and obs.raycluster is not None:
        retry = settings.recheck_seconds  # pods may get stuck without the RayCluster's status changing
    elif ready and any(_pending(p) for p in obs.pods + current_pods):
        retry = settings.recheck_seconds  # a pod not placed yet may turn out unschedulable: no pod watch tells us
    d.cond(ConditionType.RAY_CLUSTER_READY, ready, rc.reason, rc.message)
    if current is None:
        # Two drivers on one experiment would both write its state: wait until every earlier driver pod is gone.
        live_pods = [p for p in obs.driver_pods if pod_is_live(p)]
        if others or live_pods:
            js = ChildState("pending", Reason.WAITING_FOR_PREVIOUS_DRIVER,
                            "waiting for the previous driver to stop before the new one continues the experiment")
        elif ready and obs.driver_service_account_exists is False:
            js = ChildState("pending", Reason.SERVICE_ACCOUNT_NOT_FOUND, (
                f"ServiceAccount {settings.driver_service_account!r} not found in namespace {obs.namespace}: the driver "
                "pod cannot start; the Helm chart creates it with its Role and RoleBinding in driverRBAC.namespaces: add this namespace"))
            retry = settings.recheck_seconds
        elif ready:
            actions.append(Action("create_job", "Job", job_name,
                                  builders.build_driver_job(obs.name, obs.namespace, spec, settings)))
            js = ChildState("pending", Reason.DRIVER_STARTING, f"created driver Job {job_name}")
        else:
            js = ChildState("pending", Reason.DRIVER_STARTING, "the driver starts when the RayCluster is ready")
    elif js.kind == "pending":
        # The Job controller reports a refused pod (Pod Security, a quota) only as an event on the Job.
        refused = failed_create(obs.job_events) if not _live(current_pods) else None
        driver_problems = [p for p in problems if p.component == builders.COMPONENT_DRIVER]
        if refused:
            js = ChildState("pending", Reason.POD_CREATE_FAILED,
                            f"the Job controller cannot create the driver pod of Job {job_name}: {refused}")
        elif driver_problems:
            js = ChildState("pending", Reason.PODS_NOT_STARTING, "; ".join(map(str, driver_problems)))
        retry = settings.recheck_seconds
    d.cond(ConditionType.DRIVER_RUNNING, js.kind == "running", js.reason, js.message)
    d.cond(ConditionType.COMPLETE, False, js.reason if ready else rc.reason, "the experiment is not over")
    if ready:
        message = f"{js.message}; {waiting_pods}" if ray_problems else js.message
        phase(Phase.RUNNING, js.reason if js.kind == "running" else Reason.RAY_CLUSTER_READY, message)
    else:
        phase(Phase.PROVISIONING, Reason.RAY_CLUSTER_CREATING, rc.message)
    warn_once(d, ConditionType.DRIVER_RUNNING, js.reason, js.message)
    warn_once(d, ConditionType.RAY_CLUSTER_READY, rc.reason, rc.message)
    storage_cond = get_condition(d.status, ConditionType.STORAGE_READY) or {}
    warn_once(d, ConditionType.STORAGE_READY, storage_cond.get("reason", ""), storage_cond.get("message", ""))
    return Plan(d.status, actions, d.events, retry_after=retry)


@dataclass(frozen=True)
class Refusal:
    """A write the API server refused for good (see kube.Refused)."""

    kind: str
    name: str
    verb: str
    status: int
    message: str


def refused(plan_: Plan, obs: Observation, refusals: list[Refusal], settings: Settings) -> Plan:
    """The plan's status once some of its writes were refused: a condition, a Warning event once, a retry.

    A RayCluster refused is RayClusterReady=False, a Job or ConfigMap refused DriverRunning=False, both
    with reason CreateRefused and the API server's own message (e.g. `... must be no more than 63 bytes`,
    `exceeded quota`). Retried after KUBETUNE_ERROR_BACKOFF_SECONDS, doubled by kopf's retries.
    """
    d = _Draft(obs)
    d.status = copy.deepcopy(plan_.status)
    d.events = list(plan_.events)
    for r in refusals:
        type_ = ConditionType.RAY_CLUSTER_READY if r.kind == "RayCluster" else ConditionType.DRIVER_RUNNING
        message = f"the API server refused to {r.verb} {r.kind} {r.name} ({r.status}): {r.message}"
        d.cond(type_, False, Reason.CREATE_REFUSED, message)
        d.status["message"] = message
        warn_once(d, type_, Reason.CREATE_REFUSED, message)
    return Plan(d.status, plan_.actions, d.events, retry_after=settings.error_backoff_seconds,
                permanent=plan_.permanent, backoff=True)


# Reasons that are a problem to act on: a Warning event when a condition takes one (once per cause).
WARNING_REASONS = (Reason.SERVICE_ACCOUNT_NOT_FOUND, Reason.POD_CREATE_FAILED, Reason.PODS_NOT_STARTING,
                   Reason.CREATE_REFUSED, Reason.SECRET_NOT_FOUND, Reason.LOCAL_STORAGE)


def warn_once(d: "_Draft", type_: str, reason: str, message: str) -> None:
    old = get_condition(d.old, type_) or {}
    if reason in WARNING_REASONS and old.get("reason") != reason:
        d.events.append(("Warning", reason, message))


def pods_of_job(pods: list[dict[str, Any]], job_name: str) -> list[dict[str, Any]]:
    return [p for p in pods if job_name in (((p.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/job-name"),
                                            ((p.get("metadata") or {}).get("labels") or {}).get("job-name"))]


def _pending(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase", "Pending") == "Pending" and not (pod.get("metadata") or {}).get("deletionTimestamp")


def _live(pods: list[dict[str, Any]]) -> bool:
    return any(pod_is_live(p) and not (p.get("metadata") or {}).get("deletionTimestamp") for p in pods)


def admission_issues(name: str, spec: TuneExperimentSpec, settings: Settings) -> list[tuple[str, list[FieldIssue]]]:
    """What the operator refuses beyond the model: (reason, issues) per kind of check, in order."""
    name_issues = []
    limit = ObjectMeta.model_fields["name"].metadata
    max_length = next((getattr(m, "max_length", None) for m in limit if getattr(m, "max_length", None)), 40)
    if len(name) > max_length:
        name_issues.append(FieldIssue("metadata.name", (
            f"at most {max_length} characters (the driver Job's pods and their labels derive from it, "
            f"within Kubernetes' 63), got {len(name)}")))
    policy = []
    account = spec.ray_cluster.service_account_name
    if account and not settings.service_account_allowed(account):
        allowed = ", ".join(settings.allowed_service_accounts) or "none"
        policy.append(FieldIssue("spec.rayCluster.serviceAccountName", (
            f"service account {account!r} is not allowed by the operator (KUBETUNE_ALLOWED_SERVICE_ACCOUNTS: "
            f"{allowed}); leave it unset for the namespace's default")))
    for path, image in (("spec.trainable.image", spec.trainable.image), ("spec.rayCluster.image", spec.ray_cluster.image)):
        if image and not settings.image_allowed(image):
            policy.append(FieldIssue(path, (
                f"image {image!r} is not allowed by the operator: it must start with one of "
                f"{', '.join(settings.allowed_image_prefixes) or '(none)'} (KUBETUNE_ALLOWED_IMAGE_PREFIXES)")))
    # Trials no worker group can ever hold: refused before any pod (and GPU) starts.
    unplaceable = infeasible(spec, nodes_from_spec(spec))
    return [(Reason.INVALID_NAME, name_issues), (Reason.NOT_ALLOWED, policy), (Reason.INFEASIBLE, unplaceable)]


def _invalid(d: _Draft, issues: list[FieldIssue], reason: str) -> Plan:
    message = issues_message(issues) or "the spec is missing"
    old = get_condition(d.old, ConditionType.SPEC_VALID) or {}
    d.cond(ConditionType.SPEC_VALID, False, reason, message)
    d.cond(ConditionType.COMPLETE, False, reason, message)
    d.phase(Phase.FAILED, reason, f"invalid spec: {message}")
    if d.old.get("phase") == Phase.FAILED and (old.get("status") != "False" or old.get("message") != message):
        d.events.append(("Warning", reason, f"Failed: invalid spec: {message}"))
    return Plan(d.status, [], d.events, permanent=message)


def _finish_cluster(d: _Draft, rc: ChildState, cleanup: bool, delete_cluster) -> None:
    if cleanup:
        delete_cluster()
        d.cond(ConditionType.RAY_CLUSTER_READY, False, Reason.RAY_CLUSTER_DELETED,
               "the RayCluster is deleted now that the experiment is over (spec.cleanup.deleteRayClusterOnFinish)")
    elif rc.kind == "ready":
        d.cond(ConditionType.RAY_CLUSTER_READY, True, rc.reason, f"{rc.message}; kept (spec.cleanup.deleteRayClusterOnFinish: false)")


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid and ref.get("controller") for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _repair(obs: Observation, obj: dict[str, Any], kind: str) -> list[Action]:
    """Put back what the operator owns on a child edited by hand: its labels and owner reference."""
    meta = obj.get("metadata", {})
    component = (meta.get("labels") or {}).get(builders.LABEL_COMPONENT) or {
        "Job": builders.COMPONENT_DRIVER, "RayCluster": builders.COMPONENT_RAY_CLUSTER,
        "ConfigMap": builders.COMPONENT_SPEC}[kind]
    wanted = builders.labels(obs.name, component)
    patch: dict[str, Any] = {}
    labels = meta.get("labels") or {}
    missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
    if missing:
        patch["labels"] = missing
    if obs.uid and not _owned_by(obj, obs.uid):
        others = [r for r in meta.get("ownerReferences") or [] if not r.get("controller")]
        patch["ownerReferences"] = others + [builders.owner_reference(obs.name, obs.uid)]
    return [Action("repair", kind, meta["name"], {"metadata": patch})] if patch else []


def _reconcile_configmap(obs: Observation, desired: dict[str, Any]) -> list[Action]:
    """The spec the next driver pod mounts: created, or its data brought up to date."""
    live = obs.configmap
    if live is None:
        return [Action("create_configmap", "ConfigMap", desired["metadata"]["name"], desired)]
    actions = _repair(obs, live, "ConfigMap")
    if (live.get("data") or {}) != desired["data"]:
        actions.append(Action("patch_configmap", "ConfigMap", desired["metadata"]["name"], {"data": desired["data"]}))
    return actions


def _reconcile_raycluster(obs: Observation, desired: dict[str, Any]) -> list[Action]:
    """Apply a changed spec.rayCluster; hand edits (e.g. replicas set by the autoscaler) are left alone."""
    live = obs.raycluster or {}
    actions = _repair(obs, live, "RayCluster")
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(builders.ANNOTATION_SPEC_HASH)
    wanted_hash = desired["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASH]
    if live_hash != wanted_hash:
        actions.append(Action("patch_raycluster", "RayCluster", desired["metadata"]["name"], {
            "metadata": {"annotations": {builders.ANNOTATION_SPEC_HASH: wanted_hash}},
            "spec": keep_live_replicas(desired["spec"], live.get("spec") or {}),
        }))
    return actions


def keep_live_replicas(desired: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """An existing worker group keeps its replicas (the user's or the autoscaler's), within the new bounds.

    A merge patch replaces the whole workerGroupSpecs list, so each group's live count is copied in.
    """
    out = copy.deepcopy(desired)
    counts = {g.get("groupName"): g.get("replicas") for g in live.get("workerGroupSpecs") or []}
    for group in out.get("workerGroupSpecs") or []:
        count = counts.get(group["groupName"])
        if isinstance(count, int):
            group["replicas"] = min(max(count, group.get("minReplicas", 0)), group.get("maxReplicas", count))
    return out


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from the operator's old fields to the new ones (None removes a field)."""
    old = old or {}
    patch = {}
    for key in OPERATOR_FIELDS:
        if key not in new:
            continue
        value = new[key]
        if value is None:
            if old.get(key) is not None:
                patch[key] = None
        elif old.get(key) != value:
            patch[key] = value
    return patch
