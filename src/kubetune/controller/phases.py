"""Phases and conditions as pure functions: what the observed world means and what to do about it.

`plan(observation)` is the whole decision of one reconcile: the operator-owned part of the status,
the actions on children, and the events to post. It reads nothing and writes nothing, so every
transition is unit-tested without a cluster; `reconcile.py` observes and applies.

| phase        | when                                                                  |
| ------------ | --------------------------------------------------------------------- |
| Pending      | the spec is valid, the storage Secret is missing (or nothing exists yet) |
| Provisioning | the RayCluster exists but is not ready                                |
| Running      | the RayCluster is ready; the driver Job is created / running          |
| Succeeded    | the driver Job completed                                              |
| Failed       | invalid spec, driver Job failed past its backoff limit, RayCluster failed |
| Suspended    | spec.suspend: RayCluster and driver removed, storage kept             |

The operator owns phase, message, conditions, startTime, completionTime, observedGeneration,
rayClusterName and driverJobName; the driver owns trials, progress, bestTrial and resultsUri.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.errors import FieldIssue
from kubetune.api.spec import TuneExperimentSpec
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


def job_state(job: dict[str, Any] | None) -> ChildState:
    """The driver Job: Complete/SuccessCriteriaMet -> succeeded, Failed/FailureTarget -> failed."""
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
    if int(status.get("ready") or 0) > 0:
        return ChildState("running", Reason.DRIVER_RUNNING, f"driver Job {name} is running{retried}")
    if int(status.get("active") or 0) > 0:
        return ChildState("pending", Reason.DRIVER_STARTING, f"driver pod of Job {name} is starting{retried}")
    return ChildState("pending", Reason.DRIVER_STARTING, f"driver Job {name} created{retried}")


def pod_is_live(pod: dict[str, Any]) -> bool:
    """A pod that may still be running a driver (not finished, not gone)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


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
    secret_exists: bool | None = None
    configmap: dict[str, Any] | None = None
    raycluster: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    driver_pods: list[dict[str, Any]] = field(default_factory=list)
    driver_service_account_exists: bool | None = None
    uid: str = ""


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
        return _invalid(d, obs)
    spec = obs.spec
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
        message = "suspended: the RayCluster and the driver are removed, storage is kept; set spec.suspend to false to resume"
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
    if resumed_from == Phase.SUSPENDED:
        resume_note = "resumed: continuing the experiment from storage"
    elif resumed_from is not None:
        resume_note = f"the spec changed after the experiment ended ({resumed_from}): continuing it from storage"
    if resumed_from is not None:
        d.status["completionTime"] = None
    d.status["driverJobName"] = job_name
    if not d.status.get("startTime"):
        d.status["startTime"] = obs.now

    def phase(p: str, reason: str, message: str) -> None:
        d.phase(p, reason, f"{resume_note}; {message}" if resume_note else message,
                event_reason=Reason.RESUMED if resume_note else None)

    # Storage: the Secret must exist before any pod refers to it (a missing one would wedge the pods).
    storage = spec.storage
    if storage.secret_ref:
        if not obs.secret_exists:
            message = (f"Secret {storage.secret_ref!r} (spec.storage.secretRef) not found in namespace "
                       f"{obs.namespace}; waiting for it")
            d.cond(ConditionType.STORAGE_READY, False, Reason.SECRET_NOT_FOUND, message)
            phase(Phase.PENDING, Reason.SECRET_NOT_FOUND, message)
            return Plan(d.status, actions, d.events, retry_after=settings.secret_retry_seconds)
        d.cond(ConditionType.STORAGE_READY, True, Reason.SECRET_FOUND, f"Secret {storage.secret_ref!r} found")
    elif storage.is_s3:
        d.cond(ConditionType.STORAGE_READY, True, Reason.NO_SECRET_REF,
               "no spec.storage.secretRef: the pods use the credentials of their environment (e.g. a workload identity)")
    else:
        d.cond(ConditionType.STORAGE_READY, True, Reason.LOCAL_STORAGE,
               "spec.storage.uri is not s3://: results stay on the driver pod's disk and are lost with it")

    jobs = {j["metadata"]["name"]: j for j in obs.jobs}
    current = jobs.get(job_name)
    others = [j for n, j in jobs.items() if n != job_name]
    for job in others:  # an earlier run (e.g. before numSamples was raised): stop it before the new one starts
        if job_state(job).kind != "deleting":
            actions.append(Action("delete_job", "Job", job["metadata"]["name"]))
    js = job_state(current)

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
        d.cond(ConditionType.DRIVER_RUNNING, False, Reason.DRIVER_FAILED, js.message)
        d.cond(ConditionType.COMPLETE, False, Reason.DRIVER_FAILED, js.message)
        _finish_cluster(d, rc, cleanup, delete_cluster)
        d.finish(Phase.FAILED, Reason.DRIVER_FAILED, js.message)
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
                "pod cannot start; apply the kubetune-driver ServiceAccount, Role and RoleBinding (operator/rbac.yaml) here"))
            retry = settings.secret_retry_seconds
        elif ready:
            actions.append(Action("create_job", "Job", job_name,
                                  builders.build_driver_job(obs.name, obs.namespace, spec, settings)))
            js = ChildState("pending", Reason.DRIVER_STARTING, f"created driver Job {job_name}")
        else:
            js = ChildState("pending", Reason.DRIVER_STARTING, "the driver starts when the RayCluster is ready")
    d.cond(ConditionType.DRIVER_RUNNING, js.kind == "running", js.reason, js.message)
    d.cond(ConditionType.COMPLETE, False, js.reason if ready else rc.reason, "the experiment is not over")
    if ready:
        phase(Phase.RUNNING, js.reason if js.kind == "running" else Reason.RAY_CLUSTER_READY, js.message)
    else:
        phase(Phase.PROVISIONING, Reason.RAY_CLUSTER_CREATING, rc.message)
    old_driver = get_condition(d.old, ConditionType.DRIVER_RUNNING) or {}
    if js.reason == Reason.SERVICE_ACCOUNT_NOT_FOUND and old_driver.get("reason") != Reason.SERVICE_ACCOUNT_NOT_FOUND:
        d.events.append(("Warning", Reason.SERVICE_ACCOUNT_NOT_FOUND, js.message))
    return Plan(d.status, actions, d.events, retry_after=retry)


def _invalid(d: _Draft, obs: Observation) -> Plan:
    message = issues_message(obs.issues) or "the spec is missing"
    old = get_condition(d.old, ConditionType.SPEC_VALID) or {}
    d.cond(ConditionType.SPEC_VALID, False, Reason.INVALID_SPEC, message)
    d.cond(ConditionType.COMPLETE, False, Reason.INVALID_SPEC, message)
    d.phase(Phase.FAILED, Reason.INVALID_SPEC, f"invalid spec: {message}")
    if d.old.get("phase") == Phase.FAILED and (old.get("status") != "False" or old.get("message") != message):
        d.events.append(("Warning", Reason.INVALID_SPEC, f"Failed: invalid spec: {message}"))
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
            "spec": desired["spec"],
        }))
    return actions


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
