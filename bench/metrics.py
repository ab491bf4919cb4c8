"""What metrics cost: the quickstart's wall time with metrics on and off, side by side (a benchmark, not a test).

Both variants run examples/quickstart.yaml through the driver (what `kubetune run` calls) on one embedded
Ray started before timing, alternating the order round by round. "on" collects every metric and serves
them on 127.0.0.1 while a scraper reads /metrics every second (Prometheus's default is every 15-60 s, so
this is the pessimistic case); "off" is `--no-metrics`. Both draw the trials plot. Then it prints the
series the experiment leaves once its finished trials' TTL is over (tests/test_metrics.py checks that a
100-trial experiment leaves no more than a 2-trial one).

    ./dev bench-metrics  or  .venv/bin/python bench/metrics.py [--rounds N] [--set PATH=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CPUS = 2


class Scraper(threading.Thread):
    def __init__(self, url: str, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.url, self.interval_s, self.stop, self.scrapes = url, interval_s, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                resp.read()
            self.scrapes += 1


def run_once(overrides: list[str], metrics_on: bool, name: str) -> tuple[float, int]:
    from kubetune.api import load_experiment_file
    from kubetune.tune.driver import run_experiment

    experiment = load_experiment_file(ROOT / "examples" / "quickstart.yaml",
                                      [f"metadata.name={name}", *overrides])
    scraper = None
    server = None
    if metrics_on:
        from kubetune.tune.telemetry import start_server

        server, port = start_server(0)
        scraper = Scraper(f"http://127.0.0.1:{port}/metrics")
        scraper.start()
    started = time.perf_counter()
    outcome = run_experiment(experiment, storage_override=tempfile.mkdtemp(prefix="bench-metrics-"),
                             metrics=metrics_on)
    wall = time.perf_counter() - started
    if scraper is not None:
        scraper.stop.set()
        scraper.join()
        server.shutdown()
    assert outcome.status == "succeeded", outcome.message
    return wall, scraper.scrapes if scraper else 0


def series_of(experiment: str) -> int:
    from kubetune import metrics

    ttl = metrics.METRICS.trials.ttl_s
    metrics.METRICS.trials.ttl_s = 0
    try:
        return sum(1 for family in metrics.REGISTRY.collect() for s in family.samples
                   if s.labels.get("experiment") == experiment)
    finally:
        metrics.METRICS.trials.ttl_s = ttl


class _Trial:
    def __init__(self, i: int):
        self.trial_id, self.status, self.last_result = f"{i:08x}", "RUNNING", {}


def in_process_cost(results: int = 20_000, trials: int = 100) -> tuple[float, float]:
    """(µs of the driver's metrics work per reported result, ms per scrape with `trials` trials' series)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from kubetune.metrics import Metrics
    from kubetune.tune.telemetry import TrialObserver

    m = Metrics(CollectorRegistry())
    observer = TrialObserver("default", "cost", "score", "max", "asha", trials, metrics=m)
    population = [_Trial(i) for i in range(trials)]
    result = {"score": 0.5, "training_iteration": 3, "time_this_iter_s": 0.2,
              "_kubetune": {"samples": 512, "checkpoint_save_s": 0.01, "checkpoint_bytes": 20_000}}
    started = time.perf_counter()
    for i in range(results):
        observer.on_trial_result(i, population, population[i % trials], result)
    per_result_us = (time.perf_counter() - started) / results * 1e6
    started = time.perf_counter()
    for _ in range(50):
        generate_latest(m.registry)
    per_scrape_ms = (time.perf_counter() - started) / 50 * 1e3
    return per_result_us, per_scrape_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    args = parser.parse_args()

    from kubetune.api import load_experiment_file
    from kubetune.tune.driver import ensure_ray
    from kubetune.tune.trainable import import_entrypoint

    ensure_ray(num_cpus=CPUS)
    # warm-up: the trainable's imports (torch) in this process, not timed
    import_entrypoint(load_experiment_file(ROOT / "examples" / "quickstart.yaml").spec.trainable.entrypoint)
    # warm-up: the first experiment in a process pays for imports (searcher, scheduler, Tune's loggers); not timed
    run_once([*args.set, "spec.search.numSamples=2", "spec.stop.maxIterations=2"], True, "bench-metrics-warm-up")
    print(f"== metrics on/off: examples/quickstart.yaml {' '.join(args.set)} on {CPUS} CPUs, {args.rounds} round(s)")
    walls: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for variant in order:
            wall, scrapes = run_once(args.set, variant == "on", f"bench-metrics-{variant}-{r}")
            walls[variant].append(wall)
            extra = f" ({scrapes} scrapes)" if variant == "on" else ""
            print(f"  round {r + 1}  metrics {variant:3s} {wall:7.2f} s{extra}", flush=True)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    pairs = [b / a for a, b in zip(walls["off"], walls["on"])]  # each round's own ratio: less exposed to drift
    print(f"  median   metrics off {off:7.2f} s | metrics on {on:7.2f} s")
    print(f"  on / off = {on / off:.3f} (medians); per round {', '.join(f'{r:.3f}' for r in pairs)}   (target <= 1.02)")
    print(f"  series the experiment leaves after its trials' TTL: {series_of(f'bench-metrics-on-{args.rounds - 1}')}")
    per_result_us, per_scrape_ms = in_process_cost()
    print("== in-process cost (less disturbed by other load than wall times are)")
    print(f"  driver metrics work per reported result: {per_result_us:.1f} us; one scrape with 100 running trials: "
          f"{per_scrape_ms:.2f} ms")
    results = 16 * 20  # the quickstart's upper bound: 16 trials x 20 iterations
    cost_s = results * per_result_us / 1e6 + off * per_scrape_ms / 1e3  # and a scrape every second
    print(f"  for the quickstart (<= {results} results, a scrape a second for {off:.0f} s): {cost_s * 1e3:.0f} ms "
          f"= {cost_s / off * 100:.2f}% of its wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
