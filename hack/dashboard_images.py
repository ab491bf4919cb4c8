"""Draw the README's dashboard images from real query results (not a test; needs prometheus on PATH).

Runs `kubetune run` of the quickstart with metrics on, scraped every second by Debian's prometheus
(as tests/test_prometheus.py does), then evaluates every panel's queries over the run and draws each
dashboard's panels with matplotlib into docs/images/dashboard-<uid>.png.

    PYTHONPATH=src:trial-image .venv/bin/python hack/dashboard_images.py [--smoke] [--set PATH=VALUE ...]
    PYTHONPATH=src:trial-image .venv/bin/python hack/dashboard_images.py --operator   # needs the envtest binaries
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.test_prometheus import VARIABLES, Prometheus, _binaries  # noqa: E402

from kubetune import dashboards  # noqa: E402


def legend(fmt: str, labels: dict) -> str:
    if not fmt or fmt == "__auto":
        shown = {k: v for k, v in labels.items() if k not in ("__name__", "job", "instance", "namespace", "experiment")}
        return ",".join(f"{k}={v}" for k, v in shown.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def draw(board: dashboards.Dashboard, results: dict, start: float, out: Path,
         subtitle: str = "kubetune run examples/quickstart.yaml, scraped by Prometheus") -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = [p for p in board.panels if any(results.get((p.title, q.expr)) for q in p.queries)]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(15, 3.2 * rows), dpi=90)
    fig.suptitle(f"{board.title} ({subtitle})", fontsize=13)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_title(panel.title, fontsize=10)
        series = [(legend(q.legend, s["metric"]), s["values"]) for q in panel.queries
                  for s in results.get((panel.title, q.expr), [])]
        if panel.kind == "stat":
            ax.axis("off")
            shown = series[:6]
            for row, (name, values) in enumerate(shown):
                text = f"{float(values[-1][1]):.4g}"
                label = "" if name == "value" else f"{name}  "
                ax.text(0.5, 1 - (row + 0.5) / max(len(shown), 1), f"{label}{text}", ha="center", va="center",
                        fontsize=22 if len(shown) == 1 else 13, color="tab:green", transform=ax.transAxes)
        elif panel.kind == "bargauge":
            names = [n for n, _ in series][:12]
            values = [float(v[-1][1]) for _, v in series][:12]
            ax.barh(range(len(values)), values, color="tab:green")
            ax.set_yticks(range(len(values)), names, fontsize=8)
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.4g}", va="center", fontsize=8)
        else:
            for name, values in series[:12]:
                xs = [float(t) - start for t, _ in values]
                ys = [float(v) if v not in ("NaN", "+Inf", "-Inf") else float("nan") for _, v in values]
                ax.plot(xs, ys, linewidth=1, label=name)
            ax.set_xlabel("seconds into the run", fontsize=8)
            if len(series) <= 8:
                ax.legend(fontsize=7, loc="best")
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--operator", action="store_true",
                        help="the operator dashboard instead: runs tests/test_prometheus.py's operator test, which draws it")
    args = parser.parse_args()
    if args.operator:
        env = dict(os.environ, KUBETUNE_DASHBOARD_IMAGES=str(ROOT / "docs" / "images"))
        return subprocess.call([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_prometheus.py"),
                                "-k", "operator"], env=env, cwd=ROOT)
    prometheus_bin, _ = _binaries()
    work = Path(tempfile.mkdtemp(prefix="kubetune-dashboard-images-"))
    port = free_port()
    prom = Prometheus(prometheus_bin, work).start({"kubetune-run": f"127.0.0.1:{port}"})
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "trial-image")]))
        cmd = [sys.executable, "-m", "kubetune.cli", "run", str(ROOT / "examples" / "quickstart.yaml"),
               "--storage", str(work / "results"), "--metrics-port", str(port),
               "--set", "spec.stop.timeBudgetSeconds=600"]
        cmd += ["--smoke"] if args.smoke else []
        for item in args.set:
            cmd += ["--set", item]
        start = time.time()
        subprocess.run(cmd, env=env, cwd=work, check=True, stdout=subprocess.DEVNULL)
        end = time.time()
        time.sleep(2)
        out_dir = ROOT / "docs" / "images"
        out_dir.mkdir(parents=True, exist_ok=True)
        subs = {**VARIABLES, "$__rate_interval": "20s", "$namespace": "default", "$experiment": "quickstart"}
        for board in dashboards.dashboards():
            if board.uid == "kubetune-operator":
                continue  # needs an operator; see tests/test_prometheus.py
            results = {}
            for panel in board.panels:
                for q in panel.queries:
                    expr = q.expr
                    for key, value in subs.items():
                        expr = expr.replace(key, value)
                    answer = prom.range_query(expr, start, end)
                    results[(panel.title, q.expr)] = answer["data"]["result"] if answer.get("status") == "success" else []
            draw(board, results, start, out_dir / f"dashboard-{board.uid.removeprefix('kubetune-')}.png")
        (work / "results" / "quickstart" / "kubetune-trials.png").replace(out_dir / "quickstart-trials.png")
        print((out_dir / "quickstart-trials.png").relative_to(ROOT))
    finally:
        prom.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
