"""Thin kopf handlers: every trigger runs the same idempotent reconcile (reconcile.py).

* `tuneexperiment_create` / `_resume` / `_update` (spec): reconcile; an invalid spec is a
  `kopf.PermanentError` (fixed only by a new spec); a child the API server refused a
  `kopf.TemporaryError` with a doubling delay; waiting on something no watch reports (pods that do not
  start, a missing service account) a quiet re-check after KUBETUNE_RECHECK_SECONDS (no error logged).
* `raycluster_event` / `job_event`: any change of a child (KubeRay marking it ready, the Job
  completing, a hand edit or deletion) reconciles its owner at once.
* a periodic resync (a thread of ours, every KUBETUNE_RESYNC_SECONDS): a safety net. Not a kopf timer:
  kopf puts a finalizer on every object that has timers, and a finalizer protects nothing here (the
  children go by ownerReferences and the garbage collector) but makes `kubectl delete` hang while the
  operator is down or uninstalled. So there is no finalizer; an old one (`kubetune.io/finalizer`) is
  removed by kopf when it sees the experiment.
* kopf's diff base (what it compares a spec with to detect an update) holds digests of the spec and
  metadata, not their copy: a large spec cannot overflow the 256 KiB annotation limit.

Handlers are registered per call of `register()`, into a registry of their own, so the settings
(timer interval, backoffs) are read once at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any, Callable

import kopf

from kubetune.api.spec import API_GROUP, API_VERSION, KIND, PLURAL
from kubetune import metrics
from kubetune.controller import builders
from kubetune.controller.kube import Kube
from kubetune.controller.reconcile import reconcile, reconcile_by_name
from kubetune.controller.settings import Settings

log = logging.getLogger("kubetune.operator")


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base as digests: {"spec": {"sha256": ...}, "metadata": {"sha256": ...}}.

    kopf compares the stored essence with the current one to call `on.update(field="spec")`; a digest
    changes exactly when the spec does, and stays ~150 bytes whatever the spec's size.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        return {key: {"sha256": _sha256(value)} for key, value in essence.items()}


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def configure_kopf(ks: kopf.OperatorSettings, settings: Settings) -> None:
    """kopf's own bookkeeping under the kubetune.io group; one standalone operator, no peering."""
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    ks.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=API_GROUP, key="last-handled-configuration")
    ks.persistence.finalizer = f"{API_GROUP}/finalizer"  # none is added; kopf removes this old one
    ks.peering.standalone = True
    if not settings.clusterwide:
        # Namespaced: no cluster-wide scan of CRDs and namespaces, so Roles in the watched namespaces suffice.
        ks.scanning.disabled = True
    # The operator posts its own events on each transition; kopf's per-handler events would repeat them.
    ks.posting.enabled = False
    # Watch only the Jobs and RayClusters kubetune made (server-side selectors), not the whole cluster's.
    ks.watching.label_selectors["batch", "jobs"] = builders.LABEL_EXPERIMENT
    ks.watching.label_selectors["ray.io", "rayclusters"] = builders.LABEL_EXPERIMENT


def owner_of(body: Any) -> str | None:
    """The TuneExperiment that controls a child: its owner reference, else its label."""
    meta = body.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/") and ref.get("controller"):
            return ref.get("name")
    return (meta.get("labels") or {}).get(builders.LABEL_EXPERIMENT)


def register(settings: Settings, kube_factory: Callable[[], Kube] = Kube,
             registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    registry = registry or kopf.OperatorRegistry()
    operator_settings = settings
    clients: dict[str, Kube] = {}

    def kube() -> Kube:
        if "kube" not in clients:
            clients["kube"] = kube_factory()
        return clients["kube"]

    def run(body: Any, trigger: str):
        with metrics.reconciling(trigger):
            plan = reconcile(kube(), body, settings)
        if plan is not None and plan.permanent:
            metrics.METRICS["kubetune_operator_reconcile_errors"].labels("invalid_spec").inc()
        return plan

    def reconcile_or_raise(body: Any, trigger: str, retry: int = 0) -> None:
        plan = run(body, trigger)
        if plan is None:
            return
        if plan.permanent:
            raise kopf.PermanentError(f"invalid spec: {plan.permanent}")
        if plan.retry_after and plan.backoff:
            # A refused write: kopf retries the handler, doubling the delay up to 5 minutes.
            raise kopf.TemporaryError(plan.status.get("message") or "refused",
                                      delay=min(plan.retry_after * 2 ** min(retry, 8), 300.0))
        if plan.retry_after:
            # A wait (pods not starting, a missing service account) is no error: a quiet re-check later.
            meta = body.get("metadata", {})
            retry_later(meta["namespace"], meta["name"], plan.retry_after)

    resource = (API_GROUP, API_VERSION, PLURAL)
    backoff = settings.error_backoff_seconds

    @kopf.on.login(id="operator_login", registry=registry)
    def operator_login(**kwargs: Any) -> Any:
        # The pod's service account, else KUBECONFIG: the same credentials as the adapter's client.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    stopping = threading.Event()

    @kopf.on.startup(id="operator_startup", registry=registry)
    def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, operator_settings)
        if operator_settings.resync_seconds > 0:
            threading.Thread(target=resync_loop, name="kubetune-resync", daemon=True).start()

    @kopf.on.cleanup(id="operator_cleanup", registry=registry)
    def operator_cleanup(**_: Any) -> None:
        stopping.set()

    @kopf.on.create(*resource, id="tuneexperiment_create", backoff=backoff, registry=registry)
    def tuneexperiment_create(body: Any, retry: int = 0, **_: Any) -> None:
        reconcile_or_raise(body, "create", retry)

    @kopf.on.resume(*resource, id="tuneexperiment_resume", backoff=backoff, registry=registry)
    def tuneexperiment_resume(body: Any, retry: int = 0, **_: Any) -> None:
        reconcile_or_raise(body, "resume", retry)

    @kopf.on.update(*resource, id="tuneexperiment_update", field="spec", backoff=backoff, registry=registry)
    def tuneexperiment_update(body: Any, retry: int = 0, **_: Any) -> None:
        reconcile_or_raise(body, "update", retry)

    def resync_loop() -> None:
        """Every experiment in the watched namespaces, every KUBETUNE_RESYNC_SECONDS (no finalizer needed)."""
        while not stopping.wait(operator_settings.resync_seconds):
            try:
                found = kube().list_experiments(operator_settings.watch_namespaces)
            except Exception as exc:  # the API server away: the next round tries again
                log.warning("resync: listing experiments failed: %s", exc)
                continue
            for namespace, name in found:
                if stopping.is_set():
                    return
                by_name(namespace, name, "resync")

    retries: dict[tuple[str, str], threading.Timer] = {}
    retries_lock = threading.Lock()

    def by_name(namespace: str, name: str, trigger: str) -> None:
        """Reconcile outside kopf's handlers (no kopf retries there): log errors, schedule the waits."""
        try:
            with metrics.reconciling(trigger):
                plan = reconcile_by_name(kube(), namespace, name, settings)
        except Exception as exc:  # the next event, or the resync, tries again; other experiments go on
            log.warning("reconciling %s/%s after a %s event failed: %s", namespace, name, trigger, exc)
            return
        if plan is not None and plan.retry_after:
            retry_later(namespace, name, plan.retry_after)

    def retry_later(namespace: str, name: str, delay: float) -> None:
        # e.g. the driver's ServiceAccount is missing when KubeRay reports the cluster ready: look again soon.
        key = (namespace, name)
        with retries_lock:
            if key in retries and retries[key].is_alive():
                return
            timer = threading.Timer(delay, lambda: (retries.pop(key, None), by_name(namespace, name, "retry")))
            timer.daemon = True
            retries[key] = timer
            timer.start()

    def child_event(body: Any, namespace: str | None, trigger: str) -> None:
        owner = owner_of(body)
        if owner and namespace:
            by_name(namespace, owner, trigger)

    @kopf.on.event("ray.io", "v1", "rayclusters", id="raycluster_event",
                   labels={builders.LABEL_EXPERIMENT: kopf.PRESENT}, registry=registry)
    def raycluster_event(body: Any, namespace: str | None, **_: Any) -> None:
        child_event(body, namespace, "raycluster")

    @kopf.on.event("batch", "v1", "jobs", id="job_event",
                   labels={builders.LABEL_EXPERIMENT: kopf.PRESENT}, registry=registry)
    def job_event(body: Any, namespace: str | None, **_: Any) -> None:
        child_event(body, namespace, "job")

    return registry
