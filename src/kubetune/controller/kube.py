"""The one adapter between the operator and the Kubernetes API (kopf's own watching aside).

Everything here is a plain call with dicts in and out; a create that answers 409 Conflict is success
(the child is there, which is what we wanted), a delete that answers 404 is success too. A create or
patch that the API server refuses for good (400, 403, 422: a name too long, Pod Security, a quota)
raises `Refused`, which the reconcile turns into a condition. The operator reads no Secret at all.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import socket
import threading
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kubetune import metrics
from kubetune.api.spec import API_GROUP, API_VERSION, KIND, PLURAL
from kubetune.controller import builders

log = logging.getLogger("kubetune.operator.kube")

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"
REPORTING_COMPONENT = "kubetune-operator"

# Test hook for "restart at any point": after this many successful writes the process SIGKILLs
# itself, as a crash between two API calls would. Unset in production.
FAULT_ENV = "KUBETUNE_FAULT_KILL_AFTER_WRITES"


class Refused(Exception):
    """The API server refused a write (4xx other than 404/409/429): retrying the same body will not help."""

    def __init__(self, verb: str, kind: str, name: str, status: int, message: str):
        super().__init__(f"{verb} {kind} {name}: {status} {message}")
        self.verb, self.kind, self.name, self.status, self.message = verb, kind, name, status, message


def _refusal(exc: ApiException, verb: str, kind: str, name: str) -> Exception:
    """A permanent 4xx as `Refused` (with the API server's message), anything else as it was."""
    if exc.status is None or not 400 <= exc.status < 500 or exc.status in (404, 409, 429):
        return exc
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = str(exc.reason)
    return Refused(verb, kind, name, exc.status, str(message)[:1000])


def load_config() -> client.ApiClient:
    """In-cluster service account, else KUBECONFIG (as kubectl)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """The operator's API calls. Thread-safe (kopf runs sync handlers in a thread pool)."""

    def __init__(self, api_client: client.ApiClient | None = None):
        self.api_client = metrics.instrument_api_client(api_client or load_config())
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self._writes = 0
        self._lock = threading.Lock()
        limit = os.environ.get(FAULT_ENV)
        self._kill_after = int(limit) if limit else None
        self.instance = os.environ.get("HOSTNAME") or socket.gethostname()

    # -- plumbing

    def _json(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    def _wrote(self) -> None:
        with self._lock:
            self._writes += 1
            if self._kill_after is not None and self._writes >= self._kill_after:
                log.warning("%s=%d reached: killing the operator", FAULT_ENV, self._kill_after)
                os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _absent(exc: ApiException) -> bool:
        return exc.status == 404

    # -- the TuneExperiment

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if self._absent(exc):
                return None
            raise

    def list_experiments(self, namespaces: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(namespace, name) of every experiment in these namespaces (all when empty)."""
        if namespaces:
            items = [i for ns in namespaces for i in
                     self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL)["items"]]
        else:
            items = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)["items"]
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]

    def patch_experiment_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A merge patch of the status subresource: only the fields given (the driver writes others)."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status})
        except ApiException as exc:
            if self._absent(exc):  # deleted meanwhile: nothing left to report on
                return
            raise
        self._wrote()

    def post_event(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the TuneExperiment; best effort (an event never fails a reconcile)."""
        meta = owner.get("metadata", {})
        now = _now()
        body = {
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": meta.get("name"),
                "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": f"{API_GROUP}/operator", "reportingInstance": self.instance[:128],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta.get("namespace"), body)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta.get("namespace"), meta.get("name"), exc.reason)
            return
        self._wrote()

    # -- what the operator reads besides its children (never a Secret)

    def service_account_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_service_account(name, namespace)
        except ApiException as exc:
            if self._absent(exc):
                return False
            raise
        return True

    # -- children: read

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(self.core.read_namespaced_config_map(name, namespace))
        except ApiException as exc:
            if self._absent(exc):
                return None
            raise

    def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name)
        except ApiException as exc:
            if self._absent(exc):
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(self.batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            if self._absent(exc):
                return None
            raise

    def list_driver_jobs(self, namespace: str, experiment: str) -> list[dict[str, Any]]:
        """The experiment's Jobs (all of them are drivers: this run's, or an earlier run's)."""
        found = self.batch.list_namespaced_job(namespace, label_selector=builders.selector(experiment))
        return [self._json(j) for j in found.items]

    def list_pods(self, namespace: str, experiment: str) -> list[dict[str, Any]]:
        """The experiment's pods: its driver pods and the Ray pods KubeRay makes from its templates."""
        found = self.core.list_namespaced_pod(namespace, label_selector=builders.selector(experiment))
        return [self._json(p) for p in found.items]

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        """core/v1 Events about one object (e.g. the Job controller's FailedCreate on a driver Job)."""
        found = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}")
        return [self._json(e) for e in found.items]

    # -- children: write (409 on create and 404 on delete are success)

    def create(self, manifest: dict[str, Any]) -> None:
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        try:
            if kind == "ConfigMap":
                self.core.create_namespaced_config_map(namespace, manifest)
            elif kind == "RayCluster":
                self.custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, manifest)
            elif kind == "Job":
                self.batch.create_namespaced_job(namespace, manifest)
            else:
                raise ValueError(f"cannot create a {kind}")
        except ApiException as exc:
            if exc.status == 409:
                log.info("%s %s/%s exists already", kind, namespace, manifest["metadata"]["name"])
                return
            raise _refusal(exc, "create", kind, manifest["metadata"]["name"]) from None
        log.info("created %s %s/%s", kind, namespace, manifest["metadata"]["name"])
        self._wrote()

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A merge patch of a child (metadata repairs, ConfigMap data, RayCluster spec)."""
        try:
            if kind == "ConfigMap":
                self.core.patch_namespaced_config_map(name, namespace, body)
            elif kind == "RayCluster":
                self.custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name, body)
            elif kind == "Job":
                self.batch.patch_namespaced_job(name, namespace, body)
            else:
                raise ValueError(f"cannot patch a {kind}")
        except ApiException as exc:
            if self._absent(exc):
                return
            raise _refusal(exc, "patch", kind, name) from None
        log.info("patched %s %s/%s", kind, namespace, name)
        self._wrote()

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child; a driver Job goes in the foreground, so it is gone only once its pods are."""
        try:
            if kind == "RayCluster":
                self.custom.delete_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, name, propagation_policy="Background")
            elif kind == "Job":
                self.batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
            elif kind == "ConfigMap":
                self.core.delete_namespaced_config_map(name, namespace)
            else:
                raise ValueError(f"cannot delete a {kind}")
        except ApiException as exc:
            if self._absent(exc):
                return
            raise
        log.info("deleted %s %s/%s", kind, namespace, name)
        self._wrote()
