"""One reconcile of one TuneExperiment: observe (adapter) -> decide (phases.plan) -> apply (adapter).

Level-triggered and idempotent: it reads the experiment and its children every time and keeps no
state of its own, so an operator killed between any two calls simply runs it again. Children are
adopted with `kopf.adopt` (owner reference, namespace) before they are created.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from typing import Any, Mapping

import kopf

from kubetune.api.errors import FieldIssue, SpecError
from kubetune.api.load import load_spec
from kubetune import metrics
from kubetune.controller import builders, phases
from kubetune.controller.kube import Kube, Refused
from kubetune.controller.settings import Settings

log = logging.getLogger("kubetune.operator")

# kopf may run an experiment's own handler and a child's event handler at once, in two threads.
_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_spec(spec: Any):
    """(spec, []) or (None, issues naming each field)."""
    try:
        return load_spec(spec), []
    except SpecError as exc:
        return None, exc.issues or [FieldIssue("spec", "not a valid TuneExperiment spec")]


def observe(kube: Kube, body: Mapping[str, Any], settings: Settings, now: str | None = None) -> phases.Observation:
    meta = body.get("metadata", {})
    name, namespace = meta["name"], meta["namespace"]
    spec, issues = parse_spec(dict(body.get("spec") or {}))
    obs = phases.Observation(
        name=name, namespace=namespace, uid=meta.get("uid", ""), generation=meta.get("generation"),
        status=dict(body.get("status") or {}), now=now or now_rfc3339(), spec=spec, issues=issues,
    )
    if spec is None:
        return obs  # nothing to look at: an invalid spec creates no child
    obs.configmap = kube.get_configmap(namespace, builders.configmap_name(name))
    obs.raycluster = kube.get_raycluster(namespace, builders.ray_cluster_name(name))
    obs.jobs = kube.list_driver_jobs(namespace, name)
    job_name = builders.driver_job_name(name, spec)
    if not any(j["metadata"]["name"] == job_name for j in obs.jobs):
        current = kube.get_job(namespace, job_name)  # found by name even when its labels were edited away
        if current is not None:
            obs.jobs.append(current)
        elif settings.driver_service_account and not spec.suspend:
            # Without it the Job controller cannot create the driver pod: say so instead of waiting silently.
            obs.driver_service_account_exists = kube.service_account_exists(namespace, settings.driver_service_account)
    pods = kube.list_pods(namespace, name)  # one call: driver, head and worker pods
    obs.driver_pods = [p for p in pods if _component(p) == builders.COMPONENT_DRIVER]
    obs.pods = [p for p in pods if _component(p) in (builders.COMPONENT_HEAD, builders.COMPONENT_WORKER)]
    current = next((j for j in obs.jobs if j["metadata"]["name"] == job_name), None)
    if current is not None and phases.job_state(current, obs.driver_pods).kind == "pending" and not any(phases.pod_is_live(p) for p in phases.pods_of_job(obs.driver_pods, job_name)):
        obs.job_events = kube.list_events(namespace, "Job", job_name)  # FailedCreate: Pod Security, quotas
    return obs


def _component(pod: Mapping[str, Any]) -> str:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(builders.LABEL_COMPONENT, "")


def apply_action(kube: Kube, action: phases.Action, owner: Mapping[str, Any], namespace: str) -> None:
    if action.verb.startswith("create_"):
        manifest = dict(action.body or {})
        kopf.adopt(manifest, owner=owner)  # owner reference (controller) + namespace, for GC on deletion
        kube.create(manifest)
        metrics.METRICS["kubetune_operator_children_created"].labels(action.kind).inc()
    elif action.verb.startswith("patch_") or action.verb == "repair":
        kube.patch(action.kind, namespace, action.name, action.body or {})
    elif action.verb.startswith("delete_"):
        kube.delete(action.kind, namespace, action.name)
        metrics.METRICS["kubetune_operator_children_deleted"].labels(action.kind).inc()
    else:
        raise ValueError(f"unknown action {action.verb}")


def reconcile(kube: Kube, body: Mapping[str, Any], settings: Settings) -> phases.Plan | None:
    """Bring one experiment's children and status in line with its spec; None if it is being deleted."""
    meta = body.get("metadata", {})
    name, namespace = meta["name"], meta["namespace"]
    with _lock(namespace, name):
        # Re-read under the lock: a body handed over by kopf may be older than another thread's patch.
        fresh = kube.get_experiment(namespace, name)
        if fresh is None or fresh.get("metadata", {}).get("deletionTimestamp"):
            metrics.METRICS.experiments.observe(namespace, name, None)
            return None  # ownerReferences and the garbage collector remove the children
        obs = observe(kube, fresh, settings)
        plan = phases.plan(obs, settings)
        refusals = []
        for action in plan.actions:
            try:
                apply_action(kube, action, fresh, namespace)
            except Refused as exc:  # the others still go ahead; this one is reported and retried later
                refusals.append(phases.Refusal(action.kind, action.name, exc.verb, exc.status, exc.message))
                metrics.METRICS["kubetune_operator_reconcile_errors"].labels(metrics.status_reason(exc.status)).inc()
        if refusals:
            plan = phases.refused(plan, obs, refusals, settings)
        # Events before the status: whoever sees the new phase also finds the event that explains it.
        for type_, reason, message in plan.events:
            kube.post_event(fresh, type_, reason, message)
            log.info("%s/%s: %s %s", namespace, name, reason, message)
        patch = phases.status_patch(obs.status, plan.status)
        if patch:
            kube.patch_experiment_status(namespace, name, patch)
        if "phase" in patch:
            metrics.METRICS["kubetune_operator_phase_transitions"].labels(plan.status.get("phase", "")).inc()
        metrics.METRICS.experiments.observe(namespace, name, plan.status.get("phase") or obs.status.get("phase"))
        return plan


def reconcile_by_name(kube: Kube, namespace: str, name: str, settings: Settings) -> phases.Plan | None:
    """For events of children: reconcile their owner, read fresh from the API."""
    return reconcile(kube, {"metadata": {"name": name, "namespace": namespace}}, settings)
