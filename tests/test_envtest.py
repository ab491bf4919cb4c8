"""The test control plane (tests/envtest.py) is a real, suitably configured Kubernetes."""

from __future__ import annotations

import copy
import json
import uuid

import kubernetes.client
import kubernetes.config
import pytest
import yaml
from kubernetes.client.rest import ApiException

from tests.envtest import wait_until
from tests.envtest_fixtures import PROJECT_CRD_DIR

pytestmark = pytest.mark.kube

VALID_RAYCLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "raycluster-ok"},
    "spec": {
        "rayVersion": "2.9.0",
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": "rayproject/ray:2.9.0",
                            "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                        }
                    ]
                }
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 4,
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [{"name": "ray-worker", "image": "rayproject/ray:2.9.0"}]
                    }
                },
            }
        ],
    },
}


def _rayclusters(kube):
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def _condition(obj_conditions, ctype):
    for c in obj_conditions or []:
        if c.type == ctype:
            return c.status
    return None


# --- CRDs ------------------------------------------------------------------------------


def test_kuberay_and_project_crds_established(kube):
    ext = kubernetes.client.ApiextensionsV1Api(kube.api_client())
    names = ["rayclusters.ray.io", "rayjobs.ray.io"]
    if PROJECT_CRD_DIR.is_dir():
        for path in sorted(PROJECT_CRD_DIR.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    names.append(doc["metadata"]["name"])
    for name in names:
        crd = ext.read_custom_resource_definition(name)
        assert _condition(crd.status.conditions, "Established") == "True", name
        assert _condition(crd.status.conditions, "NamesAccepted") == "True", name


def test_raycluster_validated_by_kuberay_schema(kube, namespace):
    api = _rayclusters(kube)
    created = api.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters", copy.deepcopy(VALID_RAYCLUSTER)
    )
    assert created["metadata"]["uid"]
    got = api.get_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters", "raycluster-ok"
    )
    assert got["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 4

    # missing required fields (minReplicas/maxReplicas have schema defaults, these do not)
    bad = copy.deepcopy(VALID_RAYCLUSTER)
    bad["metadata"]["name"] = "raycluster-bad"
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    del bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", bad)
    assert err.value.status == 422
    assert "spec.workerGroupSpecs[0].groupName: Required value" in err.value.body
    assert "spec.headGroupSpec.template.spec.containers[0].name: Required value" in err.value.body
    # ... and defaults are applied from the schema
    assert created["spec"]["workerGroupSpecs"][0]["numOfHosts"] == 1

    # a wrongly typed field
    bad = copy.deepcopy(VALID_RAYCLUSTER)
    bad["metadata"]["name"] = "raycluster-bad"
    bad["spec"]["workerGroupSpecs"][0]["replicas"] = "three"
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", bad)
    assert err.value.status == 422
    assert "spec.workerGroupSpecs[0].replicas in body must be of type integer" in err.value.body

    # unknown fields are rejected with strict field validation (and pruned without it)
    unknown = copy.deepcopy(VALID_RAYCLUSTER)
    unknown["metadata"]["name"] = "raycluster-unknown"
    unknown["spec"]["headGroupSpec"]["notAField"] = True
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters", unknown, field_validation="Strict"
        )
    assert err.value.status == 400
    assert 'unknown field "spec.headGroupSpec.notAField"' in json.loads(err.value.body)["message"]
    pruned = api.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", unknown)
    assert "notAField" not in pruned["spec"]["headGroupSpec"]


# --- RBAC ------------------------------------------------------------------------------


def test_rbac_is_enforced_for_service_accounts(kube, namespace, tmp_path):
    kubeconfig = kube.service_account_kubeconfig(namespace, "limited", tmp_path / "kubeconfig")
    sa_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    core = kubernetes.client.CoreV1Api(sa_client)

    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:limited" in err.value.body

    rbac = kubernetes.client.RbacAuthorizationV1Api(kube.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "limited-pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}],
        },
    )
    # the RBAC authorizer reads bindings from an informer cache: allow it to catch up
    wait_until(
        lambda: core.list_namespaced_pod(namespace) is not None,
        timeout=15,
        message="pod list allowed after RoleBinding",
    )
    # still nothing beyond the Role
    with pytest.raises(ApiException) as err:
        core.list_namespaced_config_map(namespace)
    assert err.value.status == 403
    other = kube.create_namespace(wait_for_default_sa=False)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(other)
    assert err.value.status == 403
    kube.delete_namespace(other)


# --- garbage collector -----------------------------------------------------------------


def _owned_config_map(namespace, name, owner_api_version, owner_kind, owner):
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": owner_api_version,
                    "kind": owner_kind,
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
        "data": {"k": "v"},
    }


def _gone(read):
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_garbage_collector_deletes_dependents(kube, namespace):
    client = kube.api_client()
    core = kubernetes.client.CoreV1Api(client)
    owner = client.sanitize_for_serialization(
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    )
    core.create_namespaced_config_map(
        namespace, _owned_config_map(namespace, "dependent", "v1", "ConfigMap", owner)
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_until(
        lambda: _gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        timeout=30,
        message="garbage collection of the dependent ConfigMap",
    )


def test_garbage_collector_handles_custom_resource_owners(kube, namespace):
    """Owners of a CRD kind (a RayCluster here) are watched by the GC too."""
    api = _rayclusters(kube)
    core = kubernetes.client.CoreV1Api(kube.api_client())
    owner = api.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayclusters", copy.deepcopy(VALID_RAYCLUSTER)
    )
    core.create_namespaced_config_map(
        namespace, _owned_config_map(namespace, "rc-dependent", "ray.io/v1", "RayCluster", owner)
    )
    api.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "raycluster-ok")
    wait_until(
        lambda: _gone(lambda: core.read_namespaced_config_map("rc-dependent", namespace)),
        timeout=30,
        message="garbage collection of a RayCluster's dependent",
    )


# --- Job controller --------------------------------------------------------------------


def _job(name, backoff_limit=0):
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
                }
            },
        },
    }


def _job_pod(core, namespace, job_name):
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
    ).items
    return pods[0] if pods else None


@pytest.mark.parametrize(
    "phase, exit_code, expected",
    [("Succeeded", 0, "Complete"), ("Failed", 3, "Failed")],
)
def test_job_controller_runs_jobs(kube, namespace, phase, exit_code, expected):
    client = kube.api_client()
    core = kubernetes.client.CoreV1Api(client)
    batch = kubernetes.client.BatchV1Api(client)
    name = f"job-{uuid.uuid4().hex[:6]}"
    batch.create_namespaced_job(namespace, _job(name))

    pod = wait_until(
        lambda: _job_pod(core, namespace, name),
        timeout=30,
        message="the Job controller to create a pod",
    )
    assert pod.status.phase == "Pending"  # no scheduler, no kubelet
    assert pod.spec.service_account_name == "default"  # ServiceAccount admission ran

    kube.set_pod_phase(namespace, pod.metadata.name, "Running")
    wait_until(
        lambda: batch.read_namespaced_job(name, namespace).status.active == 1,
        timeout=30,
        message="job active=1",
    )

    kube.set_pod_phase(namespace, pod.metadata.name, phase, exit_code=exit_code)

    def finished():
        job = batch.read_namespaced_job(name, namespace)
        return _condition(job.status.conditions, expected) == "True" and job

    job = wait_until(finished, timeout=30, message=f"job condition {expected}")
    if expected == "Complete":
        assert job.status.succeeded == 1
    else:
        assert job.status.failed == 1
