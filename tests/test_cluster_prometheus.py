"""Prometheus on the real single-node cluster (tests/cluster.py): Prometheus (built from its Go module with
Kubernetes discovery by hack/prometheus/build.sh: Debian's package has none) on the host finds
the pods through Kubernetes service discovery (role: pod) against the cluster's API server, keeps those
annotated `prometheus.io/scrape: "true"` (the operator's, the driver's, the Ray head's and worker's) and
scrapes them on the pod network every second while an experiment runs; then every dashboard query is
evaluated over the run, as in tests/test_prometheus.py for `kubetune run`."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

from tests.cluster import CLUSTER_MARKS
from tests.cluster_flow import EXPERIMENTS_NS, RELEASE_NS, create_s3_secret, experiment_doc, run_on_cluster
from tests.test_prometheus import Prometheus, _panel_sources, evaluate_dashboards

pytestmark = CLUSTER_MARKS

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "hack" / "prometheus" / "build.sh"


def prometheus_with_kubernetes_sd() -> str:
    """hack/prometheus/build.sh's binary: seconds when cached; waits for ./dev test's background build."""
    proc = subprocess.run(["bash", str(BUILD)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return str(Path(os.environ.get("KUBETUNE_PROMETHEUS_DIR", ROOT / ".cache" / "prometheus")) / "bin" / "prometheus")


def pod_scrape_config(kubeconfig: str) -> dict:
    """The usual annotation-driven pod job; target labels prefixed `kubernetes_` so none collides with a
    metric's own `namespace`/`experiment` (and honor_labels keeps the metric's)."""
    meta = "__meta_kubernetes_pod_"
    return {
        "job_name": "kubernetes-pods",
        "honor_labels": True,
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig}],
        "relabel_configs": [
            {"source_labels": [meta + "annotation_prometheus_io_scrape"], "action": "keep", "regex": "true"},
            {"source_labels": [meta + "annotation_prometheus_io_path"], "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__address__", meta + "annotation_prometheus_io_port"], "target_label": "__address__",
             "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "kubernetes_namespace"},
            {"source_labels": [meta + "name"], "target_label": "kubernetes_pod"},
        ],
    }


def test_prometheus_discovers_the_operator_driver_and_ray_pods_and_the_dashboards_have_data(
        node_cluster, kubetune_installed, pod_s3, tmp_path, capsys):
    prom = Prometheus(prometheus_with_kubernetes_sd(), tmp_path).start({}, [pod_scrape_config(str(node_cluster.plane.admin_kubeconfig))])
    try:
        create_s3_secret(node_cluster)
        name = f"prom-{uuid.uuid4().hex[:4]}"
        # The quickstart reports samples (the throughput panel); a budget far above what it needs gives the
        # budget panel something to show, as in tests/test_prometheus.py.
        doc = experiment_doc("quickstart.yaml", name, pod_s3.endpoint, name)
        doc["spec"]["search"]["numSamples"] = 6
        doc["spec"].setdefault("stop", {})["timeBudgetSeconds"] = 3600
        start = time.time()
        seen = run_on_cluster(node_cluster, doc)
        end = time.time()
        assert seen["status"]["phase"] == "Succeeded", seen["status"]

        up = prom.api("query", query=f"max_over_time(up[{int(end - start) + 5}s])", time=f"{end:.3f}")["data"]["result"]
        scraped = {(s["metric"].get("kubernetes_namespace"), s["metric"].get("kubernetes_pod")): s["value"][1] for s in up}
        kinds = {kind: [pod for (ns, pod), v in scraped.items() if v == "1" and match(ns, pod)]
                 for kind, match in {
                     "operator": lambda ns, pod: ns == RELEASE_NS,
                     "driver": lambda ns, pod: ns == EXPERIMENTS_NS and pod.startswith(f"{name}-driver-"),
                     "head": lambda ns, pod: ns == EXPERIMENTS_NS and pod.startswith(name) and "-head-" in pod,
                     "worker": lambda ns, pod: ns == EXPERIMENTS_NS and pod.startswith(name) and "-worker-" in pod,
                 }.items()}

        evaluated, with_data, panels, errors = evaluate_dashboards(
            prom, start, end, {"$namespace": EXPERIMENTS_NS, "$experiment": name})
        sources = _panel_sources()
        core = [key for key, panel in sources.items() if panel.core and panel.source in ("driver", "operator")]
        missing = [f"{board} / {title}" for board, title in core if not panels.get((board, title))]
        with capsys.disabled():
            print(f"\n[cluster] Prometheus (Kubernetes SD, role pod): scraped with up=1 {kinds}; dashboard "
                  f"queries evaluated {evaluated}, with data {with_data}; core driver+operator panels with data "
                  f"{len(core) - len(missing)}/{len(core)}; missing {missing}")
        assert errors == []
        assert all(kinds.values()), (kinds, scraped)
        assert missing == []
    finally:
        prom.stop()
