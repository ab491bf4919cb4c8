"""Pure manifest builders: a validated spec (plus the operator's settings) -> Kubernetes dicts.

No API calls and no kopf here: the handlers add the owner reference (`kopf.adopt`) and the adapter
sends the result. Names are derived from the experiment's name, so that an operator restarted at any
point finds, instead of duplicating, what it created before.

Secret values never appear in a manifest: S3 credentials reach the pods as `secretKeyRef`
environment variables that name the Secret, and the Ray token comes from the Secret KubeRay creates.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubetune.api import exitcodes
from kubetune.api.spec import API_GROUP, API_VERSION, AWS_METADATA_ENV, KIND, PodOverlay, TuneExperimentSpec
from kubetune.controller.settings import Settings
from kubetune.metrics import DRIVER_METRICS_PORT

# -- names, labels, annotations (other parts rely on them: DESIGN.md)

LABEL_EXPERIMENT = "kubetune.io/experiment"
LABEL_COMPONENT = "kubetune.io/component"
ANNOTATION_SPEC_HASH = "kubetune.io/spec-hash"
ANNOTATION_RUN = "kubetune.io/run"

COMPONENT_DRIVER = "driver"
COMPONENT_HEAD = "head"
COMPONENT_WORKER = "worker"
COMPONENT_RAY_CLUSTER = "ray-cluster"
COMPONENT_SPEC = "spec"

SPEC_KEY = "spec.json"
SPEC_DIR = "/etc/kubetune"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_KEY}"
DRIVER_CONTAINER = "driver"

# Ray's fixed head ports (KubeRay's defaults): GCS, dashboard, Ray Client.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
# KubeRay's Secret with the Ray token (authOptions.mode=token) has this key and the RayCluster's name.
RAY_TOKEN_KEY = "auth_token"

# Keys of the storage Secret (what `kubetune run` reads from the environment too).
S3_SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))

# Pod Security `restricted` by default (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# a non-root numeric user (the trial image's uid; a name such as Ray's `ray` cannot be verified by the
# kubelet), the runtime's seccomp profile, no privilege escalation, every capability dropped.
POD_SECURITY_CONTEXT = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# Ray's object store lives in /dev/shm; a container runtime's default is 64 MB.
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def ray_cluster_name(experiment: str) -> str:
    return experiment


def head_service_name(ray_cluster: str) -> str:
    """The head Service KubeRay creates for a RayCluster."""
    return f"{ray_cluster}-head-svc"


def configmap_name(experiment: str) -> str:
    return f"{experiment}-spec"


# Parts of the spec only the operator reads: left out of the driver's spec.json, so that a driver image
# older than the operator (e.g. from before spec.pods) still reads what the operator writes.
OPERATOR_ONLY_KEYS = ("suspend", "cleanup", "pods")


def driver_spec(spec: TuneExperimentSpec) -> dict[str, Any]:
    """The spec as the driver reads it (spec.json): without OPERATOR_ONLY_KEYS."""
    data = spec.dump()
    for key in OPERATOR_ONLY_KEYS:
        data.pop(key, None)
    return data


def run_hash(spec: TuneExperimentSpec) -> str:
    """What identifies one run of the search: the spec without the parts the search does not depend on.

    suspend, cleanup, pods and rayCluster (the driver reads it only to check that trials fit) may change
    under a running search without restarting it; any other change (e.g. a raised search.numSamples)
    starts a new driver that continues from storage.
    """
    data = driver_spec(spec)
    data.pop("rayCluster", None)
    return _digest(data)[:8]


def driver_job_name(experiment: str, spec: TuneExperimentSpec) -> str:
    # <= 40 + 16 characters: the Job controller's pod names and job-name labels stay within 63.
    return f"{experiment}-driver-{run_hash(spec)}"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def labels(experiment: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": experiment,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": "kubetune-operator",
        LABEL_EXPERIMENT: experiment,
        LABEL_COMPONENT: component,
    }


def selector(experiment: str, component: str | None = None) -> str:
    """A label selector for an experiment's children (of one component)."""
    parts = [f"{LABEL_EXPERIMENT}={experiment}"]
    if component:
        parts.append(f"{LABEL_COMPONENT}={component}")
    return ",".join(parts)


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The TuneExperiment as controller of a child (what kopf.adopt writes, for callers without kopf)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": name, "uid": uid,
        "controller": True, "blockOwnerDeletion": True,
    }


# -- images and environment


def ray_image(spec: TuneExperimentSpec, settings: Settings) -> str:
    return spec.ray_cluster.image or spec.trainable.image or settings.trial_image


def driver_image(spec: TuneExperimentSpec, settings: Settings) -> str:
    # The driver imports the trainable (to fail fast on a bad entrypoint), so the trainable's image first.
    return spec.trainable.image or spec.ray_cluster.image or settings.trial_image


def storage_env(spec: TuneExperimentSpec) -> list[dict[str, Any]]:
    """S3 credentials as references to the spec's Secret (never the values); the EC2 metadata service off
    unless it may be the only source of credentials (the driver's rule: Storage.skips_instance_metadata).

    Every Ray pod needs it, not only the driver: trials and Ray's own uploads build S3 clients there too.
    """
    storage = spec.storage
    env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": storage.secret_ref, "key": key,
                                                     **({"optional": True} if optional else {})}}}
        for key, optional in S3_SECRET_KEYS
    ] if storage.secret_ref else []
    if storage.skips_instance_metadata(has_credentials=bool(storage.secret_ref)):
        env.append({"name": AWS_METADATA_ENV, "value": "true"})
    return env


def ray_auth_env(ray_cluster: str, settings: Settings) -> list[dict[str, Any]]:
    """The driver's Ray token, from the Secret KubeRay creates for authOptions.mode=token."""
    if settings.ray_auth_mode != "token":
        return []
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": ray_cluster, "key": RAY_TOKEN_KEY}}},
    ]


def _quantity(value: str | int) -> str:
    return str(value)


def _tolerations(items: list) -> list[dict[str, Any]]:
    return [t.dump() for t in items]


# -- the children


def build_configmap(experiment: str, namespace: str, spec: TuneExperimentSpec) -> dict[str, Any]:
    """The normalised spec, mounted into the driver pod at SPEC_PATH."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name(experiment), "namespace": namespace,
                     "labels": labels(experiment, COMPONENT_SPEC)},
        "data": {SPEC_KEY: spec_json(spec)},
    }


def spec_json(spec: TuneExperimentSpec) -> str:
    return json.dumps(driver_spec(spec), indent=2, sort_keys=True) + "\n"


def _ray_container(name: str, image: str, settings: Settings, cpu, memory, gpu: int = 0,
                   gpu_resource: str = "nvidia.com/gpu", env: list | None = None, head: bool = False) -> dict[str, Any]:
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": _quantity(cpu), "memory": _quantity(memory)},
        "limits": {"cpu": _quantity(cpu), "memory": _quantity(memory)},
    }
    if gpu:
        # Extended resources must be requested and limited alike; KubeRay passes the limit to `ray start --num-gpus`.
        resources["requests"][gpu_resource] = str(gpu)
        resources["limits"][gpu_resource] = str(gpu)
    ports = [{"containerPort": settings.ray_metrics_port, "name": "metrics"}]
    if head:
        ports = [
            {"containerPort": GCS_PORT, "name": "gcs-server"},
            {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
            {"containerPort": CLIENT_PORT, "name": "client"},
        ] + ports
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "resources": resources,
        "ports": ports,
        "env": list(env or []),
        "volumeMounts": [dict(SHM_MOUNT)],
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, key by key into nested objects (a securityContext overlay over the defaults)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scrape_annotations(port: int) -> dict[str, str]:
    """Prometheus' pod-discovery convention (`prometheus.io/scrape|port|path`): a Prometheus that keeps
    pods by these annotations scrapes the pod's metrics without the Prometheus Operator's PodMonitor."""
    if not port:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def apply_overlay(experiment: str, component: str, pod_spec: dict[str, Any], overlay: PodOverlay,
                  annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod template: the restricted security defaults and kubetune's `annotations`, then the spec's
    overlay for this role.

    The main container is the first; kubetune's labels win over the overlay's, the overlay's annotations
    over kubetune's (e.g. `prometheus.io/scrape: "false"`).
    """
    spec = copy.deepcopy(pod_spec)
    spec["securityContext"] = _merge(POD_SECURITY_CONTEXT, overlay.security_context)
    container = spec["containers"][0]
    container["securityContext"] = _merge(CONTAINER_SECURITY_CONTEXT, overlay.container_security_context)
    if overlay.volume_mounts:
        container["volumeMounts"] = container.get("volumeMounts", []) + copy.deepcopy(overlay.volume_mounts)
    if overlay.volumes:
        spec["volumes"] = spec.get("volumes", []) + copy.deepcopy(overlay.volumes)
    if overlay.affinity:
        spec["affinity"] = copy.deepcopy(overlay.affinity)
    if overlay.priority_class_name:
        spec["priorityClassName"] = overlay.priority_class_name
    if overlay.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in overlay.image_pull_secrets]
    metadata: dict[str, Any] = {"labels": {**overlay.labels, **labels(experiment, component)}}
    if annotations or overlay.annotations:
        metadata["annotations"] = {**(annotations or {}), **overlay.annotations}
    return {"metadata": metadata, "spec": spec}


def _pod_template(experiment: str, component: str, container: dict, node_selector: dict, tolerations: list,
                  service_account: str | None, overlay: PodOverlay, metrics_port: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "volumes": [dict(SHM_VOLUME)]}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = _tolerations(tolerations)
    if service_account:
        spec["serviceAccountName"] = service_account
    return apply_overlay(experiment, component, spec, overlay, scrape_annotations(metrics_port))


def build_raycluster(experiment: str, namespace: str, spec: TuneExperimentSpec, settings: Settings) -> dict[str, Any]:
    """A ray.io/v1 RayCluster: the head, the spec's worker groups, GPUs, scheduling, autoscaling, metrics."""
    rc = spec.ray_cluster
    image = ray_image(spec, settings)
    env = storage_env(spec)
    metrics = {"metrics-export-port": str(settings.ray_metrics_port)}

    head_params = {"dashboard-host": "0.0.0.0", **metrics}
    if rc.worker_groups:
        head_params["num-cpus"] = "0"  # trials go to the workers; the head keeps Ray's control plane
    head_params.update(rc.head.ray_start_params)
    head = {
        "rayStartParams": head_params,
        "template": _pod_template(
            experiment, COMPONENT_HEAD,
            _ray_container("ray-head", image, settings, rc.head.cpu, rc.head.memory, env=env, head=True),
            rc.head.node_selector, rc.head.tolerations, rc.service_account_name, spec.pods.head,
            settings.ray_metrics_port),
    }
    workers = []
    for group in rc.worker_groups:
        top = group.max_replicas if group.max_replicas is not None else max(group.replicas, group.min_replicas)
        workers.append({
            "groupName": group.name,
            "replicas": group.replicas,
            "minReplicas": group.min_replicas,
            "maxReplicas": top,
            "rayStartParams": {**metrics, **group.ray_start_params},
            "template": _pod_template(
                experiment, COMPONENT_WORKER,
                _ray_container("ray-worker", image, settings, group.cpu, group.memory, gpu=group.gpu,
                               gpu_resource=group.gpu_resource, env=env),
                group.node_selector, group.tolerations, rc.service_account_name, spec.pods.worker,
                settings.ray_metrics_port),
        })
    cluster_spec: dict[str, Any] = {
        "rayVersion": rc.ray_version,
        "enableInTreeAutoscaling": rc.enable_autoscaling,
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }
    if rc.enable_autoscaling:
        cluster_spec["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": settings.autoscaler_idle_timeout_seconds,
            "imagePullPolicy": settings.image_pull_policy,
            # KubeRay's autoscaler sidecar in the head pod: restricted as well.
            "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        }
    if settings.ray_auth_mode == "token":
        cluster_spec["authOptions"] = {"mode": "token"}
    name = ray_cluster_name(experiment)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": labels(experiment, COMPONENT_RAY_CLUSTER),
            "annotations": {ANNOTATION_SPEC_HASH: _digest(cluster_spec)[:16]},
        },
        "spec": cluster_spec,
    }


def ray_address(experiment: str) -> str:
    """The GCS address of the experiment's head: the driver joins the cluster there (see driver_main)."""
    return f"{head_service_name(ray_cluster_name(experiment))}:{GCS_PORT}"


def driver_command(experiment: str, namespace: str) -> list[str]:
    return ["kubetune", "driver", "--spec", SPEC_PATH, "--name", experiment, "--namespace", namespace, "--patch-status"]


def build_driver_job(experiment: str, namespace: str, spec: TuneExperimentSpec, settings: Settings) -> dict[str, Any]:
    """A batch/v1 Job running `kubetune driver` on the mounted spec, as a Ray node without resources.

    A crashed driver pod (exit 1, a lost node) is replaced by the Job and resumes from storage; the exit
    codes of outcomes a retry cannot change (exitcodes.FINAL: a bad spec, every trial failed) fail the
    Job at once, and evictions do not count against the backoff limit. The driver's last words (its
    termination message, else the tail of its log) reach the experiment's status.
    """
    name = driver_job_name(experiment, spec)
    rc = ray_cluster_name(experiment)
    env = [
        {"name": "RAY_ADDRESS", "value": ray_address(experiment)},
        # A Ray driver needs a raylet on its own node: the driver first joins the cluster as a node
        # without CPUs or GPUs (no trial lands on it), so the whole Ray API works and its callbacks
        # (status patches) run in this pod - unlike Ray Client, where Tune moves the search to the head.
        {"name": "KUBETUNE_JOIN_RAY_CLUSTER", "value": "true"},
        {"name": "KUBETUNE_STATUS_INTERVAL", "value": f"{settings.status_interval_seconds:g}"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *ray_auth_env(rc, settings),
        *storage_env(spec),
    ]
    container = {
        "name": DRIVER_CONTAINER,
        "image": driver_image(spec, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": driver_command(experiment, namespace)[:2],
        "args": driver_command(experiment, namespace)[2:],
        "env": env,
        "ports": [{"containerPort": DRIVER_METRICS_PORT, "name": "metrics"}],  # driver and trial metrics
        "resources": {
            "requests": {"cpu": settings.driver_cpu, "memory": settings.driver_memory},
            "limits": {"memory": settings.driver_memory},
        },
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}],
        "terminationMessagePath": exitcodes.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "spec", "configMap": {"name": configmap_name(experiment)}}],
    }
    if settings.driver_service_account:
        pod_spec["serviceAccountName"] = settings.driver_service_account
    template = apply_overlay(experiment, COMPONENT_DRIVER, pod_spec, spec.pods.driver, scrape_annotations(DRIVER_METRICS_PORT))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": labels(experiment, COMPONENT_DRIVER),
            "annotations": {ANNOTATION_RUN: run_hash(spec)},
        },
        "spec": {
            "backoffLimit": settings.driver_backoff_limit,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": DRIVER_CONTAINER, "operator": "In",
                                                      "values": list(exitcodes.FINAL)}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": template,
        },
    }


def delete_ray_cluster_on_finish(spec: TuneExperimentSpec, settings: Settings) -> bool:
    """spec.cleanup.deleteRayClusterOnFinish if the experiment sets it, else the operator's default."""
    if "cleanup" in spec.model_fields_set and "delete_ray_cluster_on_finish" in spec.cleanup.model_fields_set:
        return spec.cleanup.delete_ray_cluster_on_finish
    return settings.delete_ray_cluster_on_finish
