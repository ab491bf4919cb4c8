"""charts/kubetune with the real `helm` (hack/helm/build.sh) and the real API server (tests/envtest.py).

Without a cluster: `helm lint --strict` of every ci/*-values.yaml, the schema refusing bad values with
the value's path, the CRD identical to crds/, every operator setting a documented value, RBAC with
no wildcard and nothing cluster-wide when namespaced. On the test API server: every variant's
`helm template` output accepted by a server-side dry run (strict field validation, the Prometheus
Operator's own CRDs for the monitors), the operator's pod admitted under the `restricted` Pod
Security Standard, and `helm install`, `upgrade`, `uninstall` with the objects checked after each.
The RBAC is proven by use in tests/test_operator_kube.py (see tests/operator_fixtures.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from typing import Any

import pytest
import yaml

from kubetune.controller.settings import Settings, env_name
from tests.envtest import REPO_ROOT, wait_until
from tests.helm import CHART, HELM_DIR, Helm, ensure_helm, helm, render, select

pytestmark = [pytest.mark.helm]

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING_CRDS = HELM_DIR / "crds"


@pytest.fixture(scope="session", autouse=True)
def helm_binary():
    return ensure_helm()


# ----------------------------------------------------------------------------- without a cluster


def test_there_are_ci_values_for_every_variant():
    assert {p.name for p in CI_VALUES} >= {"namespaced-values.yaml", "monitoring-values.yaml", "custom-images-values.yaml"}


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values):
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_the_chart_crd_is_the_generated_one():
    """Helm installs charts/kubetune/crds/ as is: the same bytes as crds/ (`kubetune crd` writes those)."""
    for generated in (REPO_ROOT / "crds").glob("*.yaml"):
        shipped = CHART / "crds" / generated.name
        assert shipped.is_file(), f"{shipped} missing: cp {generated} {shipped}"
        assert shipped.read_bytes() == generated.read_bytes(), f"{shipped} differs from {generated}: cp it again"
    assert {p.name for p in (CHART / "crds").iterdir()} == {p.name for p in (REPO_ROOT / "crds").glob("*.yaml")}


@pytest.mark.parametrize("values, message", [
    ({"operator": {"replicas": 2}}, "at '/operator': additional properties 'replicas' not allowed"),
    ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
    ({"experiments": {"ray": {"authMode": "none"}}}, "at '/experiments/ray/authMode': value must be one of 'token', 'disabled'"),
    ({"operator": {"metricsPort": 70000}}, "at '/operator/metricsPort': maximum: got 70,000, want 65,535"),
    ({"operator": {"logLevel": "verbose"}}, "at '/operator/logLevel': value must be one of"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"experiments": {"driver": {"memory": "lots"}}}, "at '/experiments/driver/memory'"),
    ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}}, "at '/monitoring/serviceMonitor/enabled': got string, want boolean"),
])
def test_bad_values_are_refused_with_the_path_and_what_is_allowed(values, message):
    proc = helm("template", "kubetune", str(CHART), values=values, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def _deployment(docs) -> dict[str, Any]:
    (deployment,) = select(docs, "Deployment")
    return deployment


def _env(deployment) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_every_operator_setting_is_a_chart_value_and_the_operator_accepts_them():
    for values in (None, *CI_VALUES):
        env = _env(_deployment(render(files=[values] if values else [])))
        kubetune_env = {k: v for k, v in env.items() if k.startswith("KUBETUNE_")}
        assert set(kubetune_env) == {env_name(f) for f in dataclasses.fields(Settings)}, (
            "the chart's Deployment must set exactly the operator's settings (src/kubetune/controller/settings.py)")
        Settings.from_env(kubetune_env)  # raises SettingsError on a value the operator would refuse


def test_chart_values_reach_the_settings():
    env = _env(_deployment(render(files=[CHART / "ci" / "custom-images-values.yaml"])))
    settings = Settings.from_env(env)
    assert settings.trial_image == "registry.example.com/ml/kubetune-trial-custom:2026.11"
    assert settings.image_pull_policy == "Always" and settings.driver_service_account == "tuning-driver"
    assert settings.allowed_image_prefixes == ("registry.example.com/ml/",) and settings.allowed_service_accounts == ("ray-workers",)
    env = _env(_deployment(render(files=[CHART / "ci" / "namespaced-values.yaml"])))
    assert Settings.from_env(env).watch_namespaces == ("team-a", "team-b")
    assert Settings.from_env(_env(_deployment(render()))).clusterwide


def test_the_operator_pod_tells_prometheus_where_its_metrics_are_as_the_experiments_pods_do():
    """`prometheus.io/*` on the operator's pod (its metrics port), like the driver and Ray pods the operator
    builds (controller/builders.py scrape_annotations); podAnnotations win; no metrics port, no annotations."""
    from kubetune.controller.builders import scrape_annotations

    pod = _deployment(render())["spec"]["template"]
    assert pod["metadata"]["annotations"] == scrape_annotations(9090)
    (container,) = pod["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9090} in [{k: p[k] for k in ("name", "containerPort")} for p in container["ports"]]
    pod = _deployment(render({"operator": {"metricsPort": 9191, "podAnnotations": {"prometheus.io/scrape": "false", "team": "ml"}}}))["spec"]["template"]
    assert pod["metadata"]["annotations"] == {**scrape_annotations(9191), "prometheus.io/scrape": "false", "team": "ml"}
    assert "annotations" not in _deployment(render({"operator": {"metricsPort": 0}}))["spec"]["template"]["metadata"]


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            paths += _leaf_paths(value, path)
        else:
            paths.append(path)
    return paths


def _schema_paths(schema: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        closed = sub.get("additionalProperties") is False
        paths += _schema_paths(sub, path) if closed and sub.get("properties") else [path]
    return paths


def test_values_are_documented_and_the_schema_is_closed():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())

    def closed(node: dict, where: str):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"values.schema.json: {where} is not closed"
            for key, sub in node["properties"].items():
                closed(sub, f"{where}.{key}")

    closed(schema, "(root)")
    leaves = _leaf_paths(values)
    # Every value has a schema property and every schema property a value (one may be the other's parent:
    # `resources: {}` against the schema's requests/limits, a free-form securityContext).
    schema_paths = set(_schema_paths(schema))

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    assert not [p for p in leaves if not any(related(p, s) for s in schema_paths)], "values without a schema"
    assert not [s for s in schema_paths if not any(related(s, p) for p in leaves)], "schema properties without a value"
    # Every leaf key in values.yaml has a `# --` comment (helm-docs' convention) in the lines above it,
    # or its parent has one (a group documented as a whole, e.g. the security contexts).
    lines = text.splitlines()
    documented = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        if j >= 0 and lines[j].strip().startswith("# --"):
            documented.add((len(m.group(1)), m.group(2)))
    undocumented = []
    for path in leaves:
        keys = path.split(".")
        if not any((2 * depth, key) in documented for depth, key in enumerate(keys)):
            undocumented.append(path)
    assert not undocumented, f"values.yaml: no `# --` comment for {undocumented}"


def _rules(docs):
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                yield doc, rule


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rbac_has_no_wildcard(values):
    for doc, rule in _rules(render(files=[values] if values else [])):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"{doc['kind']} {doc['metadata']['name']}: wildcard in {field}"


def test_namespaced_install_grants_nothing_cluster_wide():
    docs = render(files=[CHART / "ci" / "namespaced-values.yaml"], namespace="kubetune-system")
    assert not select(docs, "ClusterRole") and not select(docs, "ClusterRoleBinding")
    for ns in ("team-a", "team-b"):
        for kind in ("Role", "RoleBinding"):
            assert select(docs, kind, "kubetune-operator", ns), f"no operator {kind} in {ns}"
            assert select(docs, kind, "kubetune-driver", ns), f"no driver {kind} in {ns}"
        assert select(docs, "ServiceAccount", "kubetune-driver", ns)
    (binding,) = select(docs, "RoleBinding", "kubetune-operator", "team-a")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": "kubetune-system"}]


def test_cluster_wide_install_and_user_roles():
    docs = render(namespace="kubetune-system")
    (role,) = select(docs, "ClusterRole", "kubetune-operator")
    assert {"customresourcedefinitions"} <= {r for rule in role["rules"] for r in rule["resources"]}
    assert select(docs, "ClusterRoleBinding", "kubetune-operator")
    # The drivers' RBAC lands in the release's namespace unless told otherwise.
    assert select(docs, "Role", "kubetune-driver", "kubetune-system")
    edit, view = select(docs, "ClusterRole", "kubetune-edit"), select(docs, "ClusterRole", "kubetune-view")
    assert edit[0]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view[0]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for rule in view[0]["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}


def test_monitoring_and_dashboards_are_off_by_default_and_on_when_asked(tmp_path):
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor"} and not select(render(), "ConfigMap")
    # A chart copy with a dashboard, as the observability work ships them in charts/kubetune/dashboards/.
    chart = tmp_path / "kubetune"
    shutil.copytree(CHART, chart)
    (chart / "dashboards").mkdir(exist_ok=True)
    dashboard = {"title": "kubetune test", "panels": [{"type": "timeseries", "targets": [{"expr": "up"}]}]}
    (chart / "dashboards" / "zz-test.json").write_text(json.dumps(dashboard))
    docs = render(files=[CHART / "ci" / "monitoring-values.yaml"], chart=chart)
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PodMonitor"}
    dashboards = sorted((chart / "dashboards").glob("*.json"))
    maps = select(docs, "ConfigMap")
    assert len(maps) == len(dashboards)
    (ours,) = [m for m in maps if "zz-test.json" in m["data"]]
    assert ours["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(ours["data"]["zz-test.json"]) == dashboard


# ----------------------------------------------------------------------------- on the API server


def _resource_paths(kube) -> dict[tuple[str, str], tuple[str, bool]]:
    """(apiVersion, kind) -> (plural, namespaced), from the API server's discovery."""
    found: dict[tuple[str, str], tuple[str, bool]] = {}
    group_versions = ["v1"]
    _, groups = kube.request("GET", "/apis")
    group_versions += [v["groupVersion"] for g in groups["groups"] for v in g["versions"]]
    for gv in group_versions:
        _, listing = kube.request("GET", f"/api/{gv}" if gv == "v1" else f"/apis/{gv}")
        for res in listing.get("resources", []):
            if "/" not in res["name"]:
                found[(gv, res["kind"])] = (res["name"], res["namespaced"])
    return found


def _collection(kube, doc: dict[str, Any], paths: dict | None = None) -> str:
    """The URL path to POST `doc` to."""
    paths = paths or _resource_paths(kube)
    key = (doc["apiVersion"], doc["kind"])
    assert key in paths, f"the API server serves no {key}"
    plural, namespaced = paths[key]
    base = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
    ns = doc["metadata"].get("namespace")
    assert bool(ns) == namespaced, f"{doc['kind']} {doc['metadata']['name']}: namespace {ns!r}"
    return f"{base}/namespaces/{ns}/{plural}" if namespaced else f"{base}/{plural}"


def server_dry_run(kube, docs: list[dict[str, Any]]) -> list[str]:
    """Create each object with dryRun=All and strict field validation; the API server's complaints."""
    paths = _resource_paths(kube)
    errors = []
    for doc in docs:
        path = _collection(kube, doc, paths)
        status, body = kube.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", doc)
        if status not in (200, 201):
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: HTTP {status} {body.get('message', body)}")
    return errors


@pytest.fixture(scope="module")
def monitoring_crds(kube):
    """The Prometheus Operator's ServiceMonitor and PodMonitor CRDs (from its Go module, hack/helm/build.sh)."""
    files = sorted(MONITORING_CRDS.glob("monitoring.coreos.com_*.yaml"))
    assert len(files) == 2, f"no monitoring CRDs in {MONITORING_CRDS}: run hack/helm/build.sh"
    kube.apply_crds(files)


@pytest.mark.kube
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendered_chart_is_accepted_by_the_api_server(kube, monitoring_crds, values):
    namespace = kube.create_namespace(wait_for_default_sa=False)
    try:
        # A release of its own: the chart's cluster-scoped objects (ClusterRoles) then do not collide
        # with those an earlier test of the session created under the default release name.
        docs = render(files=[values] if values else [], namespace=namespace, release=f"dry-{namespace}"[:53])
        for ns in {d["metadata"].get("namespace") for d in docs} - {None, namespace}:
            kube.create_namespace(ns, wait_for_default_sa=False)
        assert not server_dry_run(kube, docs)
    finally:
        kube.delete_namespace(namespace)


@pytest.mark.kube
def test_the_operator_pod_is_admitted_under_the_restricted_pod_security_standard(kube):
    namespace = kube.create_namespace(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        template = _deployment(render(namespace=namespace))["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": namespace,
               "labels": template["metadata"]["labels"]}, "spec": {**template["spec"], "serviceAccountName": "default"}}
        status, body = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
        assert status == 201, body
        # The check is real: the same pod as root is refused.
        pod["spec"]["securityContext"] = {**pod["spec"]["securityContext"], "runAsNonRoot": False, "runAsUser": 0}
        status, body = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
        assert status == 403 and "violates PodSecurity" in body["message"], body
    finally:
        kube.delete_namespace(namespace)


def _get(kube, path: str) -> dict[str, Any] | None:
    status, body = kube.request("GET", path)
    return body if status == 200 else None


@pytest.mark.kube
def test_helm_install_upgrade_uninstall(kube, tmp_path, capsys):
    """Install, then play kubelet for the operator pod: run its command with the pod's env and service
    account token, until kopf's /healthz answers and the Deployment is available; the operator, with
    only the chart's RBAC, takes an experiment from there. Then upgrade and uninstall."""
    from tests.operator_fixtures import Cluster, OperatorProcess, experiment_manifest, free_port

    h = Helm(kube.admin_kubeconfig)
    # Its own release name: the operator tests' RBAC (release `kubetune`, tests/operator_fixtures.py) stays apart.
    release, namespace = "kt-chart", f"kt-chart-{time.time_ns() % 10**8}"
    name = f"{release}-kubetune-operator"
    team = kube.create_namespace()
    t0 = time.monotonic()
    h.install(release, namespace, {"driverRBAC": {"namespaces": [team]}})
    installed = time.monotonic() - t0
    op = None
    try:
        # The controllers take it from there: Deployment -> ReplicaSet -> Pod (Pending: there is no kubelet).
        def operator_pod():
            _, pods = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=app.kubernetes.io/component%3Doperator")
            return (pods.get("items") or [None])[0]

        pod = wait_until(operator_pod, timeout=60, interval=0.1, message="the operator pod")
        pod_created = time.monotonic() - t0
        (container,) = pod["spec"]["containers"]
        assert container["command"] == ["kubetune", "operator"] and pod["spec"]["serviceAccountName"] == name
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        env.update(KUBETUNE_METRICS_PORT=str(free_port()), KUBETUNE_RESYNC_SECONDS="5", KUBETUNE_RECHECK_SECONDS="1")
        kubeconfig = kube.service_account_kubeconfig(namespace, name, tmp_path / "operator.kubeconfig")
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", None, env).start()
        kube.set_pod_phase(namespace, pod["metadata"]["name"], "Running")
        wait_until(lambda: (_get(kube, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {})
                   .get("status", {}).get("availableReplicas") == 1, timeout=60, interval=0.1, message="the Deployment available")
        ready = time.monotonic() - t0
        assert _get(kube, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{team}/rolebindings/kubetune-driver")
        # The operator, with the chart's ClusterRole only, takes an experiment in a namespace it was never told of.
        cluster = Cluster(kube, team)
        try:
            cluster.create(experiment_manifest("chart"))
            wait_until(lambda: cluster.rayclusters("chart"), timeout=60, interval=0.2,
                       message=f"the RayCluster of the experiment\n{op.tail()}")
            cluster.delete("chart")
            wait_until(lambda: cluster.get("chart") is None, timeout=60, interval=0.2, message="the experiment gone")
        finally:
            cluster.close()
        # The built-in `edit` role picked up <fullname>-edit (kube-controller-manager's aggregation).
        wait_until(lambda: any("kubetune.io" in r.get("apiGroups", []) for r in
                               (_get(kube, "/apis/rbac.authorization.k8s.io/v1/clusterroles/edit") or {}).get("rules", [])),
                   timeout=30, interval=0.2, message="edit to aggregate kubetune-edit")
        status = json.loads(h("status", release, "--namespace", namespace, "--output", "json").stdout)
        assert status["info"]["status"] == "deployed" and "kubectl get tunex -w" in status["info"]["notes"]
        with capsys.disabled():
            print(f"\n[chart] helm install {installed:.1f}s; -> operator pod created {pod_created:.1f}s; "
                  f"-> operator live and Deployment available {ready:.1f}s")
    finally:
        if op:
            op.stop()

    # Upgrade: a setting changes the Deployment; namespaced mode swaps the ClusterRole for Roles.
    h.upgrade(release, namespace, {"driverRBAC": {"namespaces": [team]}, "watchNamespaces": [team],
                                   "operator": {"logLevel": "DEBUG"}})
    deployment = _get(kube, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    assert _env(deployment)["KUBETUNE_LOG_LEVEL"] == "DEBUG" and _env(deployment)["KUBETUNE_WATCH_NAMESPACES"] == team
    assert _get(kube, f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}") is None
    assert _get(kube, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{team}/roles/{name}")
    history = json.loads(h("history", release, "--namespace", namespace, "--output", "json").stdout)
    assert [r["revision"] for r in history] == [1, 2]
    # A bad value is refused before anything changes.
    proc = h("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
             "--set", "operator.logLevel=LOUD", check=False)
    assert proc.returncode != 0 and "/operator/logLevel" in proc.stderr
    assert len(json.loads(h("history", release, "--namespace", namespace, "--output", "json").stdout)) == 2

    h.uninstall(release, namespace)
    for path in (f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                 f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{team}/roles/{name}",
                 f"/api/v1/namespaces/{team}/serviceaccounts/kubetune-driver",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{release}-kubetune-edit"):
        assert _get(kube, path) is None, f"{path} left after helm uninstall"
    # Helm never deletes a CRD from crds/ (that would delete every experiment): it stays.
    assert _get(kube, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/tuneexperiments.kubetune.io")
    kube.delete_namespace(team)
    kube.delete_namespace(namespace)


@pytest.mark.kube
def test_namespaced_operator_can_do_nothing_outside_its_namespaces(kube):
    """The negative control of tests/test_operator_kube.py's namespaced runs: the same RBAC, refused elsewhere."""
    watched, other = kube.create_namespace(wait_for_default_sa=False), kube.create_namespace(wait_for_default_sa=False)
    release, namespace = "kt-scope", kube.create_namespace(wait_for_default_sa=False)
    try:
        docs = render({"watchNamespaces": [watched], "driverRBAC": {"create": False}, "rbac": {"aggregateToDefaultRoles": False}},
                      namespace=namespace, release=release)
        assert not server_dry_run(kube, docs)
        for doc in docs:
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                status, body = kube.request("POST", _collection(kube, doc), doc)
                assert status == 201, body
        token = kube.service_account_token(namespace, f"{release}-kubetune-operator", create=False)
        wait_until(lambda: kube.request("GET", f"/apis/kubetune.io/v1alpha1/namespaces/{watched}/tuneexperiments", token=token)[0] == 200,
                   timeout=30, interval=0.2, message="the Role to take effect")
        for path in (f"/apis/kubetune.io/v1alpha1/namespaces/{other}/tuneexperiments",
                     "/apis/kubetune.io/v1alpha1/tuneexperiments",
                     "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                     f"/api/v1/namespaces/{watched}/secrets"):
            status, _ = kube.request("GET", path, token=token)
            assert status == 403, f"the namespaced operator may GET {path}"
    finally:
        for ns in (watched, other, namespace):
            kube.delete_namespace(ns)
