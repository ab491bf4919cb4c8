"""The dashboards against a real Prometheus (Debian's package) scraping real endpoints on loopback.

`kubetune run` of the quickstart (smoke-sized) serves its metrics; the operator, on the envtest API
server, serves its own. Prometheus scrapes both every second; then every PromQL expression of every
dashboard is evaluated through Prometheus's HTTP API over the run: each must parse, and every panel
whose data the scraped endpoint provides must return some. `promtool check metrics` must find
nothing to say about any endpoint, and no sample may have a label outside its declared bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kubetune import dashboards, metrics
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "hack" / "prometheus" / "install.sh"
SCRAPE_INTERVAL_S = 1
# What Grafana would put in for the dashboards' variables and interval macros.
VARIABLES = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s"}


def _binaries() -> tuple[str, str]:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        subprocess.run(["bash", str(INSTALL)], check=True)
    return shutil.which("prometheus"), shutil.which("promtool")


class Prometheus:
    def __init__(self, binary: str, workdir: Path):
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, targets: dict[str, str], scrape_configs: list[dict] = ()) -> "Prometheus":
        """Scrape each static target (job name -> host:port) and the given scrape configs (e.g. discovery)."""
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()] + list(scrape_configs),
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400 for a query that does not parse
            return json.loads(exc.read())

    def range_query(self, expr: str, start: float, end: float) -> dict:
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{SCRAPE_INTERVAL_S}s")


@pytest.fixture
def prometheus(tmp_path):
    prometheus_bin, _ = _binaries()
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        prom = Prometheus(prometheus_bin, tmp_path).start(targets)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


class Scraper:
    """Reads an endpoint while it lives and keeps the richest exposition (for promtool and the label checks)."""

    def __init__(self, url: str, wanted: str):
        self.url, self.wanted = url, wanted
        self.best = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            if text.count(self.wanted) >= self.best.count(self.wanted) and "kubetune_" in text:
                self.best = text


def promtool_check(promtool: str, exposition: str) -> str:
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip() if result.returncode or result.stdout or result.stderr else ""


def evaluate_dashboards(prom: Prometheus, start: float, end: float, substitutions: dict[str, str],
                        results: dict | None = None):
    """Every expression of every dashboard: (evaluated, with data, panels by title -> has data, parse errors).

    `results`, when given, receives each panel query's series by (dashboard, panel, expression).
    """
    evaluated = with_data = 0
    panels: dict[tuple[str, str], bool] = {}
    errors = []
    for path in sorted((ROOT / dashboards.OUTPUT_DIR).glob("*.json")):
        board = json.loads(path.read_text())
        exprs = [(v["name"], v["definition"]) for v in board["templating"]["list"] if v["type"] == "query"]
        for panel in board["panels"]:
            exprs += [(panel["title"], t["expr"]) for t in panel["targets"]]
        for title, expr in exprs:
            original = expr
            if expr.startswith("label_values("):  # a variable: label_values(selector, label)
                selector, label = expr[len("label_values("):-1].rsplit(",", 1)
                expr = f"group by ({label.strip()}) ({selector})"
            for key, value in {**VARIABLES, **substitutions}.items():
                expr = expr.replace(key, value)
            answer = prom.range_query(expr, start, end)
            evaluated += 1
            if answer.get("status") != "success":
                errors.append(f"{board['title']} / {title}: {expr}: {answer.get('error')}")
                continue
            if results is not None:
                results[(board["title"], title, original)] = answer["data"]["result"]
            has = any(series.get("values") for series in answer["data"]["result"])
            with_data += has
            key = (board["title"], title)
            panels[key] = panels.get(key, False) or has
    return evaluated, with_data, panels, errors


def _panel_sources() -> dict[tuple[str, str], dashboards.Panel]:
    return {(d.title, p.title): p for d in dashboards.dashboards() for p in d.panels}


@pytest.mark.ray
@pytest.mark.slow
def test_quickstart_dashboards_on_a_real_prometheus(prometheus, tmp_path, capsys):
    _, promtool = _binaries()
    port = free_port()
    prom = prometheus({"kubetune-run": f"127.0.0.1:{port}"})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "trial-image"), env.get("PYTHONPATH", "")])
    env["KUBETUNE_METRICS_TRIAL_TTL"] = "600"
    # A smoke run can end between two scrapes (seen in CI: the step-time and checkpoint panels had no data).
    env["KUBETUNE_METRICS_LINGER_SECONDS"] = str(3 * SCRAPE_INTERVAL_S)
    cmd = [sys.executable, "-m", "kubetune.cli", "run", str(ROOT / "examples" / "quickstart.yaml"), "--smoke",
           "--storage", str(tmp_path / "results"), "--metrics-port", str(port),
           # a budget, so that the budget panel has something to show; far more than the run needs
           "--set", "spec.stop.timeBudgetSeconds=3600"]
    start = time.time()
    with Scraper(f"http://127.0.0.1:{port}/metrics", "kubetune_trial_") as scraper:
        run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    end = time.time()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"Metrics: http://127.0.0.1:{port}/metrics" in run.stdout

    exposition = scraper.best
    assert "kubetune_trial_objective{" in exposition, "the run's endpoint was never scraped with a running trial"
    assert promtool_check(promtool, exposition) == ""
    # the two checks can fail: promtool lints a badly named counter, Prometheus rejects a broken query
    assert "_total" in promtool_check(promtool, "# HELP kubetune_bad a counter\n# TYPE kubetune_bad counter\nkubetune_bad 1\n")
    assert prom.range_query("sum(kubetune_trials", start, end)["status"] == "error"
    assert metrics.sample_problems(exposition) == []

    evaluated, with_data, panels, errors = evaluate_dashboards(
        prom, start, end, {"$namespace": "default", "$experiment": "quickstart"})
    sources = _panel_sources()
    core = [key for key, panel in sources.items() if panel.source == "driver" and panel.core]
    missing = [f"{board} / {title}" for board, title in core if not panels.get((board, title))]
    with capsys.disabled():  # shown in CI's log without -s
        print(f"\ndashboard queries evaluated: {evaluated}, returned data: {with_data}; "
              f"core panels (driver) with data: {len(core) - len(missing)}/{len(core)}")
    assert errors == []
    assert missing == []


@pytest.mark.kube
@pytest.mark.slow
def test_operator_dashboard_on_a_real_prometheus(prometheus, operator_factory, namespace, kube, tmp_path, capsys):
    """The operator, on the real API server, reconciling a valid and an invalid experiment while scraped."""
    from tests.operator_fixtures import Cluster, experiment_manifest, wait_until

    _, promtool = _binaries()
    port = free_port()
    prom = prometheus({"kubetune-operator": f"127.0.0.1:{port}"})
    start = time.time()
    operator = operator_factory([namespace], KUBETUNE_METRICS_PORT=str(port))
    cluster = Cluster(kube, namespace)
    try:
        with Scraper(f"http://127.0.0.1:{port}/metrics", "kubetune_operator_") as scraper:
            # Spaced out, so that the rates over the scrapes see each step (counters scraped first at 1 show no rate).
            time.sleep(3 * SCRAPE_INTERVAL_S)
            cluster.create(experiment_manifest("scraped"))
            wait_until(lambda: (cluster.get("scraped") or {}).get("status", {}).get("phase") == "Provisioning", 60)
            time.sleep(3 * SCRAPE_INTERVAL_S)
            # passes the API server's schema, fails the model: a grid with hyperopt
            cluster.create(experiment_manifest("scraped-bad", search={"algorithm": "hyperopt", "numSamples": 2, "seed": 1},
                                               parameters={"bs": {"grid": [16, 32]}}))
            wait_until(lambda: (cluster.get("scraped-bad") or {}).get("status", {}).get("phase") == "Failed", 60)
            time.sleep(3 * SCRAPE_INTERVAL_S)
            # a RayCluster deleted by hand is recreated: children created again
            uid = cluster.custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "scraped")["metadata"]["uid"]
            cluster.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "scraped")
            wait_until(lambda: cluster.custom.get_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayclusters", "scraped")["metadata"]["uid"] != uid, 60)
            time.sleep(5 * SCRAPE_INTERVAL_S)  # a few scrapes after the last change
    finally:
        cluster.close()
        operator.stop()
    end = time.time()
    exposition = scraper.best
    assert promtool_check(promtool, exposition) == ""
    assert metrics.sample_problems(exposition) == []
    results: dict = {}
    evaluated, with_data, panels, errors = evaluate_dashboards(prom, start, end, {"$namespace": namespace}, results)
    if os.environ.get("KUBETUNE_DASHBOARD_IMAGES"):  # hack/dashboard_images.py --operator
        draw_operator_dashboard(results, start, Path(os.environ["KUBETUNE_DASHBOARD_IMAGES"]))
    sources = _panel_sources()
    core = [key for key, panel in sources.items() if panel.source == "operator" and panel.core
            and key[0] == "kubetune / Operator"]
    missing = [f"{board} / {title}" for board, title in core if not panels.get((board, title))]
    with capsys.disabled():
        print(f"\noperator: dashboard queries evaluated: {evaluated}, returned data: {with_data}; "
              f"operator panels with data: {len(core) - len(missing)}/{len(core)}")
    assert errors == []
    assert missing == []


def draw_operator_dashboard(results: dict, start: float, out_dir: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboard_images", ROOT / "hack" / "dashboard_images.py")
    images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(images)
    board = dashboards.operator()
    panel_results = {(title, expr): series for (b, title, expr), series in results.items() if b == board.title}
    out_dir.mkdir(parents=True, exist_ok=True)
    images.draw(board, panel_results, start, out_dir / "dashboard-operator.png",
                subtitle="the operator on the test API server, two experiments")
