"""kubetune against plain Ray Tune, measured side by side in one run (a benchmark, not a test).

1. Trial overhead: the same sleep workload (16 trials x 20 iterations of 50 ms, 1 CPU each, on
   2 CPUs: at least 8 s) through plain `tune.Tuner(...).fit()` with Ray Tune's defaults, plain Ray
   Tune with `reuse_actors=True` (for reference), and kubetune's driver (what `kubetune run` calls),
   alternated round by round, twice: first all sharing one embedded Ray started before timing, so
   each wall time is the experiment itself, not Ray's start-up; then each on its own Ray, timed from
   `ray.init` (the plain script's own call; kubetune's driver starting its embedded Ray) to the end,
   which is what a user waits for (Ray's shutdown after it is not timed), and from `ray.init`
   returning (its own time varies more than the difference measured). For each, where the time
   above the minimum goes
   (bench/attribution.py: actor start, trial reset and setup, the per-result round trip, slots left
   free between trials, before the first and after the last trial) and the driver's time per
   callback and experiment-state save; the load average is printed next to the ratios.
2. ASHA against FIFO on the quickstart: iterations consumed, wall time and best accuracy.
3. S3 against local storage on the quickstart (with FIFO, so that both do the same work): wall time
   with moto's S3 server over local storage (target <= 1.10), and the S3 requests the run makes per
   trial-iteration (moto's access log).

    ./dev bench [--rounds N] [--skip-asha] [--skip-overhead] [--skip-s3] [--variants kubetune,reuse,defaults]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from attribution import Attribution  # noqa: E402

TRIALS, ITERATIONS, SLEEP_S, CPUS = 16, 20, 0.05, 2
MINIMUM_S = TRIALS * ITERATIONS * SLEEP_S / CPUS


def plain_sleep(config):
    """The sleep workload written for plain Ray Tune (no kubetune import)."""
    from ray import tune

    from kubetune_trials.sleep import score

    for iteration in range(1, config["iterations"] + 1):
        time.sleep(config["sleep_s"])
        tune.report({"score": score(config["x"], iteration)})


def start_own_ray() -> None:
    """ray.init as a plain script would call it, with the options of kubetune's embedded Ray."""
    import logging

    import ray

    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)


class RayInitTimer:
    """While active, records how long each `ray.init` call takes (the plain script's and kubetune's):
    2.6-4.0 s here, in steps of about 1 s, more than the difference being measured."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def __enter__(self) -> "RayInitTimer":
        import ray

        self._original = original = ray.init

        def init(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - start)

        ray.init = init
        return self

    def __exit__(self, *exc) -> None:
        import ray

        ray.init = self._original


def stop_own_ray() -> None:
    import ray

    ray.shutdown()
    time.sleep(1)  # Ray's processes exit, their CPU off the next run


def run_plain(reuse_actors: bool, attribution: Attribution, own_ray: bool = False) -> float:
    from ray import tune

    with attribution:
        if own_ray:
            start_own_ray()
        tuner = tune.Tuner(
            tune.with_resources(plain_sleep, {"cpu": 1}),
            param_space={"x": tune.uniform(0, 1), "iterations": ITERATIONS, "sleep_s": SLEEP_S},
            tune_config=tune.TuneConfig(num_samples=TRIALS, metric="score", mode="max", reuse_actors=reuse_actors),
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-plain-"), verbose=0),
        )
        results = tuner.fit()
    assert len(results) == TRIALS and not results.errors
    return attribution.t_end - attribution.t0


def sleep_experiment():
    from kubetune.api import load_experiment

    return load_experiment({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": "bench-sleep"},
        "spec": {
            "trainable": {"entrypoint": "kubetune_trials.sleep:train",
                          "config": {"iterations": ITERATIONS, "sleep_s": SLEEP_S}},
            "objective": {"metric": "score", "mode": "max"},
            "parameters": {"x": {"uniform": {"min": 0, "max": 1}}},
            "search": {"numSamples": TRIALS},
            # the plain workload does not checkpoint either
            "checkpoint": {"frequency": 0, "atEnd": False},
        },
    })


def run_kubetune(experiment, attribution: Attribution, own_ray: bool = False) -> float:
    """What `kubetune run` does: the driver with its progress display (as off a terminal) and metrics;
    with `own_ray` (no Ray running) the driver starts the embedded Ray, as `kubetune run` does."""
    import io

    from kubetune.tune.driver import run_experiment
    from kubetune.tune.progress import LiveProgress, make_console

    console = make_console()
    console.file = io.StringIO()
    with LiveProgress(console) as progress, attribution:
        outcome = run_experiment(experiment, storage_override=tempfile.mkdtemp(prefix="bench-kubetune-"),
                                 sinks=[attribution.sink(progress)], num_cpus=CPUS)
    assert outcome.status == "succeeded" and outcome.snapshot.counts["terminated"] == TRIALS, outcome.message
    return attribution.t_end - attribution.t0


VARIANTS = ("plain (defaults)", "plain (reuse_actors=True)", "kubetune")
VARIANT_NAMES = {"defaults": VARIANTS[0], "reuse": VARIANTS[1], "kubetune": VARIANTS[2]}  # --variants


def _mean_rows(runs: list[list[tuple]]) -> list[tuple]:
    """Rows (name, value...) averaged over rounds, by name (a row missing from a round counts 0)."""
    names: list[str] = []
    for rows in runs:
        names += [row[0] for row in rows if row[0] not in names]
    width = len(runs[0][0])
    by_name = [{row[0]: row for row in rows} for rows in runs]
    return [(name, *[statistics.mean(r[name][i] if name in r else 0 for r in by_name) for i in range(1, width)])
            for name in names]


def overhead_bench(rounds: int, variants: tuple[str, ...] = VARIANTS, own_ray: bool = False) -> dict[str, float]:
    """`own_ray`: no Ray may be running; each variant starts its own, inside the timing."""
    experiment = sleep_experiment()
    where = ("each on its own Ray, timed from ray.init (what a user waits for)" if own_ray
             else "sharing one Ray started before timing")
    print(f"== trial overhead: {TRIALS} trials x {ITERATIONS} x {SLEEP_S * 1000:.0f} ms on {CPUS} CPUs "
          f"(minimum {MINIMUM_S:.1f} s), {rounds} round(s), {where}")
    if not own_ray:
        run_kubetune(experiment, Attribution(CPUS, SLEEP_S))  # warm-up: imports in this process, not timed
    walls: dict[str, list[float]] = {name: [] for name in variants}
    rows: dict[str, list] = {name: [] for name in variants}
    driver: dict[str, list] = {name: [] for name in variants}
    after_init: dict[str, list[float]] = {name: [] for name in variants}  # own_ray: wall - ray.init
    for r in range(rounds):
        for name, fn in (("plain (defaults)", lambda a: run_plain(False, a, own_ray)),
                         ("kubetune", lambda a: run_kubetune(experiment, a, own_ray)),
                         ("plain (reuse_actors=True)", lambda a: run_plain(True, a, own_ray))):
            if name not in variants:
                continue
            attribution = Attribution(CPUS, SLEEP_S)
            with RayInitTimer() as ray_init:
                wall = fn(attribution)
            if own_ray:
                stop_own_ray()
                after_init[name].append(wall - sum(ray_init.durations))
            walls[name].append(wall)
            rows[name].append(attribution.rows())
            driver[name].append(attribution.driver_rows())
            since = f" ({after_init[name][-1]:.2f} s after ray.init)" if own_ray else ""
            print(f"  round {r + 1}  {name:28s} {wall:6.2f} s{since}   load {_load()}", flush=True)
    med = {name: statistics.median(v) for name, v in walls.items()}
    print_attribution({name: _mean_rows(v) for name, v in rows.items()},
                      {name: statistics.mean(v) - MINIMUM_S for name, v in walls.items()})
    print_driver({name: _mean_rows(v) for name, v in driver.items()})
    for name, value in med.items():
        print(f"  median {name:28s} {value:6.2f} s  ({value / MINIMUM_S:.2f} x minimum)")
    ratios = {}
    if "kubetune" in med:
        # against the minimum only without Ray's start-up (ray.init alone takes 2.6-4.0 s here)
        for label, other, target in (("kubetune / plain (defaults)", "plain (defaults)", "<= 0.5"),
                                     *([] if own_ray else [("kubetune / minimum", None, "<= 1.25")]),
                                     ("kubetune / plain (reuse_actors)", "plain (reuse_actors=True)", "<= 0.95")):
            if other is None or other in med:
                ratios[label] = (med["kubetune"] / (med[other] if other else MINIMUM_S), target)
    if own_ray and "kubetune" in med and "plain (reuse_actors=True)" in med:
        since = {name: statistics.median(v) for name, v in after_init.items()}
        ratios["kubetune / plain (reuse_actors), after ray.init"] = (
            since["kubetune"] / since["plain (reuse_actors=True)"], "<= 0.95")
    for label, (value, target) in ratios.items():
        print(f"  {label:48s} = {value:.2f}   (target {target})   load {_load()}")
    return {label: value for label, (value, _t) in ratios.items()}


def _load() -> str:
    import os

    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def print_attribution(rows: dict[str, list[tuple[str, float]]], overhead: dict[str, float]) -> None:
    """Where the wall time above the minimum goes (wall-equivalent seconds: CPU slot-seconds / CPUs)."""
    names = list(rows)
    print(f"  where the time above the minimum goes (mean of the rounds; seconds = CPU slot-seconds / {CPUS}):")
    print(f"    {'component':42s}" + "".join(f"{n[:24]:>26s}" for n in names))
    print(f"    {'':42s}" + "".join(f"{'s':>14s}{'share':>12s}" for _ in names))
    for i, (component, _) in enumerate(rows[names[0]]):
        cells = ""
        for n in names:
            seconds = rows[n][i][1]
            cells += f"{seconds:14.2f}{seconds / overhead[n] * 100 if overhead[n] > 0 else 0:11.0f}%"
        print(f"    {component:42s}{cells}")
    print(f"    {'overhead (wall - minimum)':42s}" + "".join(f"{overhead[n]:14.2f}{100:11.0f}%" for n in names))


def print_driver(rows: dict[str, list[tuple[str, int, float]]]) -> None:
    """The driver thread's time inside Tune's loop, by component (calls, seconds)."""
    names = list(rows)
    print("  the driver's time inside Tune's loop (mean of the rounds):")
    print(f"    {'component':42s}" + "".join(f"{n[:24]:>26s}" for n in names))
    print(f"    {'':42s}" + "".join(f"{'calls':>14s}{'s':>12s}" for _ in names))
    components = []
    for n in sorted(names, key=lambda n: -len(rows[n])):  # kubetune's callbacks exist only in its own run
        for row in rows[n]:
            if row[0] not in components:
                components.append(row[0])
    for component in components:
        cells = ""
        for n in names:
            match = [r for r in rows[n] if r[0] == component]
            cells += f"{match[0][1]:14.0f}{match[0][2]:12.3f}" if match else f"{'-':>14s}{'-':>12s}"
        print(f"    {component:42s}{cells}")


def asha_vs_fifo(rounds: int) -> None:
    from kubetune.api import load_experiment_file
    from kubetune.tune.driver import run_experiment

    from kubetune.tune.trainable import import_entrypoint

    print("== ASHA against FIFO on examples/quickstart.yaml (FIFO: the same file with scheduler fifo)")
    # warm-up: the driver imports the trainable (torch) once; not timed
    import_entrypoint(load_experiment_file(ROOT / "examples" / "quickstart.yaml").spec.trainable.entrypoint)
    stats: dict[str, list[tuple[float, int, float]]] = {"asha": [], "fifo": []}
    for r in range(rounds):
        for name, overrides in (("fifo", ["spec.scheduler={type: fifo}"]), ("asha", [])):
            experiment = load_experiment_file(ROOT / "examples" / "quickstart.yaml", overrides)
            started = time.perf_counter()
            outcome = run_experiment(experiment, storage_override=tempfile.mkdtemp(prefix=f"bench-{name}-"))
            wall = time.perf_counter() - started
            iterations = sum(t.iteration for t in outcome.snapshot.trials)
            best = outcome.best.metric if outcome.best else float("nan")
            stats[name].append((wall, iterations, best))
            print(f"  round {r + 1}  {name}: wall {wall:6.2f} s, iterations {iterations:4d}, best accuracy {best:.4f}", flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in stats.items()}
    print(f"  ASHA / FIFO iterations = {med['asha'][1] / med['fifo'][1]:.2f}")
    print(f"  ASHA / FIFO wall       = {med['asha'][0] / med['fifo'][0]:.2f}   (target <= 0.6)")
    print(f"  best accuracy: ASHA {med['asha'][2]:.4f}, FIFO {med['fifo'][2]:.4f}")


def _moto(log_path: Path):
    """moto's S3 server on a free port, its access log (one line per request) in `log_path`."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(log_path, "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its waited-for children, from /proc."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _requests(log_path: Path) -> int:
    return sum(1 for line in log_path.read_text().splitlines() if '" 2' in line or '" 3' in line or '" 4' in line)


def s3_vs_local(rounds: int) -> None:
    import os

    import boto3

    from kubetune.api import load_experiment_file
    from kubetune.tune.driver import run_experiment

    # FIFO: every trial runs all its iterations, so both runs do the same work; with ASHA the
    # iterations differ from run to run (78-158 seen) by more than the storage's cost.
    print("== S3 (moto server) against local storage on examples/quickstart.yaml with scheduler fifo (the same work)")
    for key, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    log_path = Path(tempfile.mkdtemp(prefix="bench-moto-")) / "access.log"
    proc, endpoint = _moto(log_path)
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        per_iteration: list[float] = []
        wall_per_iteration: dict[str, list[float]] = {"local": [], "s3": []}
        for r in range(rounds):
            for name in ("local", "s3"):
                overrides = ["spec.scheduler={type: fifo}"] + (
                    [] if name == "local" else [f"spec.storage.endpoint={endpoint}"])
                experiment = load_experiment_file(ROOT / "examples" / "quickstart.yaml", overrides + (
                    [f"spec.storage.uri=s3://bench/round{r}"] if name == "s3" else []))
                before, moto_cpu = _requests(log_path), _cpu_seconds(proc.pid)
                started = time.perf_counter()
                outcome = run_experiment(experiment, storage_override=(
                    tempfile.mkdtemp(prefix="bench-local-") if name == "local" else None))
                wall = time.perf_counter() - started
                walls[name].append(wall)
                iterations = sum(t.iteration for t in outcome.snapshot.trials) or 1
                wall_per_iteration[name].append(wall / iterations)
                line = (f"  round {r + 1}  {name:5s}: wall {wall:6.2f} s ({outcome.status}), {iterations} trial-iterations"
                        f"   load {_load()}")
                if name == "s3":
                    requests = _requests(log_path) - before
                    per_iteration.append(requests / iterations)
                    line += (f", {requests} S3 requests ({requests / iterations:.2f} per trial-iteration), "
                             f"the S3 server's own CPU {_cpu_seconds(proc.pid) - moto_cpu:.1f} s of these 2 cores")
                print(line, flush=True)
        med = {k: statistics.median(v) for k, v in walls.items()}
        per_it = {k: statistics.median(v) for k, v in wall_per_iteration.items()}
        print(f"  S3 / local wall                   = {med['s3'] / med['local']:.2f}   (target <= 1.10)   load {_load()}")
        print(f"  S3 / local wall per trial-iteration = {per_it['s3'] / per_it['local']:.2f}")
        print(f"  S3 requests per trial-iteration   = {statistics.median(per_iteration):.2f}")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-asha", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANT_NAMES), help=(
        "overhead variants to run, comma-separated: defaults (plain Tune), reuse (plain Tune with "
        "reuse_actors=True), kubetune (default: all three)"))
    args = parser.parse_args()

    import ray

    from kubetune.tune.driver import ensure_ray

    if not args.skip_overhead:
        try:
            variants = tuple(VARIANT_NAMES[v.strip()] for v in args.variants.split(","))
        except KeyError as exc:
            parser.error(f"--variants: unknown variant {exc}; allowed: {', '.join(VARIANT_NAMES)}")
        ensure_ray(num_cpus=CPUS)
        overhead_bench(args.rounds, variants)
        ray.shutdown()
        overhead_bench(args.rounds, variants, own_ray=True)
    ensure_ray(num_cpus=CPUS)
    if not args.skip_asha:
        asha_vs_fifo(args.rounds)
    if not args.skip_s3:
        s3_vs_local(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
