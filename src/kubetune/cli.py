"""The `kubetune` command: run, validate, crd, driver, operator."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Sequence

from kubetune.api import exitcodes

# `validate` exits 1 when a file has errors; `run` and `driver` use kubetune.api.exitcodes.
EXIT_OK, EXIT_FAILED = exitcodes.OK, 1
# Seconds `kubetune run` keeps serving its metrics after the run (default 0): a last scrape sees the end.
METRICS_LINGER_ENV = "KUBETUNE_METRICS_LINGER_SECONDS"


def _err(message: str) -> None:
    print(f"kubetune: {message}", file=sys.stderr)


# Top-level modules each extra brings; a verb that misses one says which extra to install.
EXTRA_MODULES = {
    "operator": {"kopf", "kubernetes", "prometheus_client"},
    "tune": {"ray", "pyarrow", "rich", "hyperopt", "optuna", "bayes_opt", "boto3", "botocore", "cloudpickle"},
    "trials": {"torch", "torchvision", "lightning", "sklearn", "tensorboardX"},
}


def missing_extra(exc: ImportError, verb: str) -> str | None:
    """ "`kubetune operator` needs the 'operator' extra: ..." for a module an extra provides, else None."""
    top = (getattr(exc, "name", None) or "").split(".")[0]
    for extra, modules in EXTRA_MODULES.items():
        if top in modules:
            return (f"`kubetune {verb}` needs the '{extra}' extra, which is not installed here (no module {top!r}): "
                    f"pip install 'kubetune[{extra}]'")
    return None


def _with_extras(verb: str, func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ImportError as exc:
            message = missing_extra(exc, verb)
            if message is None:
                raise
            _err(message)
            return exitcodes.CRASHED
    return run


def cmd_validate(args: argparse.Namespace) -> int:
    from kubetune.api import SpecError
    from kubetune.api.load import load_experiment, read_documents

    failed = 0
    for path in args.files:
        try:
            docs = read_documents(path)
            if not docs:
                raise SpecError([], path)
            for doc in docs:
                experiment = load_experiment(doc, path)
                entrypoint = experiment.spec.trainable.entrypoint
                if args.check_entrypoint:
                    from kubetune.tune.trainable import import_entrypoint

                    import_entrypoint(entrypoint)
                    checked = f"entrypoint {entrypoint} imported, takes the config"
                else:
                    checked = "entrypoint not imported; --check-entrypoint imports it"
                print(f"{path}: ok ({experiment.metadata.name}; {checked})")
        except SpecError as exc:
            failed += 1
            if not exc.issues:
                print(f"{path}: no TuneExperiment document found", file=sys.stderr)
            else:
                issues = "\n".join(f"  {i.path or '(document)'}: {i.message}" for i in exc.issues)
                print(f"{path}: {len(exc.issues)} error(s)\n{issues}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def _load(args: argparse.Namespace):
    from kubetune.api import load_experiment_file
    from kubetune.api.smoke import smoke_overrides

    overrides = list(args.set or [])
    if getattr(args, "storage", None):
        # --storage is spec.storage.uri: validated like it, and spec.storage.endpoint etc. work with it
        overrides.insert(0, f"spec.storage.uri={json.dumps(args.storage)}")
    experiment = load_experiment_file(args.file, overrides)
    if getattr(args, "smoke", False):
        experiment = load_experiment_file(args.file, smoke_overrides(experiment) + overrides)
    return experiment


def cmd_run(args: argparse.Namespace) -> int:
    from kubetune.api import SpecError

    try:
        experiment = _load(args)
    except SpecError as exc:
        text = exc.render()
        if args.storage:
            text = text.replace("spec.storage.uri:", "--storage (spec.storage.uri):")
        _err(text)
        return exitcodes.BAD_SPEC
    from kubetune.metrics import driver_metrics_port
    from kubetune.tune.driver import run_experiment
    from kubetune.tune.progress import LiveProgress, make_console, print_outcome
    from kubetune.tune.signals import Interrupted, exit_code
    from kubetune.tune.storage import StorageError
    from kubetune.tune.telemetry import serve_or_warn

    console = make_console()
    name = experiment.metadata.name
    try:
        port = driver_metrics_port() if args.metrics_port is None else args.metrics_port
    except ValueError as exc:
        _err(str(exc))
        return exitcodes.BAD_SPEC
    served = None if args.no_metrics else serve_or_warn(port, "127.0.0.1", _err)

    def announce(info: dict) -> None:
        verb = "Resuming" if info["restored"] else "Starting"
        console.print(f"{verb} experiment [bold]{name}[/]: {info['budget']} trial(s), storage {info['experiment_uri']}",
                      highlight=False)
        if served:
            console.print(f"Metrics: http://127.0.0.1:{served[1]}/metrics", highlight=False)

    linger_s = 0.0
    try:
        with LiveProgress(console) as progress:
            outcome = run_experiment(
                experiment, sinks=[progress], num_cpus=args.num_cpus,
                on_start=announce, verbose=args.verbose, metrics=not args.no_metrics,
            )
        # A run can end between two scrapes: serving its final state a little longer lets the last scrape see it.
        linger_s = float(os.environ.get(METRICS_LINGER_ENV) or 0) if served else 0.0
    except SpecError as exc:
        _err(exc.render())
        return exitcodes.BAD_SPEC
    except StorageError as exc:  # maybe passing (an endpoint down): a crash, worth a retry
        _err(str(exc))
        return exitcodes.CRASHED
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _err(f"interrupted by {signal.Signals(signum).name} before any trial started; run the same command again to start")
        return exit_code(signum)
    finally:
        if served:
            time.sleep(max(linger_s, 0.0))
            served[0].shutdown()
    print_outcome(console, outcome)
    if outcome.status == "succeeded":
        console.print(f"[green]{outcome.message}[/]", highlight=False)
    else:
        _err(outcome.message)
    return outcome.exit_code


def cmd_driver(args: argparse.Namespace) -> int:
    """Run on a cluster: the driver pod's entrypoint (spec from the mounted ConfigMap)."""
    from kubetune.driver_main import main as driver_main

    return driver_main(args)


def cmd_operator(args: argparse.Namespace) -> int:
    from kubetune.controller.main import main as operator_main

    return operator_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Hyperparameter tuning for PyTorch on Ray, locally or on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a TuneExperiment on this machine (an embedded Ray); run again to resume")
    run.add_argument("file", help="the TuneExperiment YAML")
    run.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. spec.search.numSamples=4 (repeatable)")
    run.add_argument("--storage", help="results directory or s3:// URI (default: spec.storage.uri, else ./kubetune-results)")
    run.add_argument("--smoke", action="store_true", help="tiny data, 2 trials, 2 iterations, CPU only: check that the experiment runs")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    run.add_argument("--verbose", action="store_true", help="let Ray's, Tune's and the searchers' own log lines through")
    run.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics of the driver and trials on 127.0.0.1:PORT/metrics during the run "
                          "(default 9450 or KUBETUNE_DRIVER_METRICS_PORT; 0: don't serve)")
    run.add_argument("--no-metrics", action="store_true", help="neither collect nor serve metrics")
    run.set_defaults(func=_with_extras("run", cmd_run))

    validate = sub.add_parser("validate", help="check TuneExperiment files; every error with its field path")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--check-entrypoint", action="store_true", help="also import each trainable entrypoint")
    validate.set_defaults(func=_with_extras("validate --check-entrypoint", cmd_validate))

    crd = sub.add_parser("crd", help="print the TuneExperiment CustomResourceDefinition generated from the spec model")
    crd.set_defaults(func=cmd_crd)

    driver = sub.add_parser("driver", help="run an experiment's search on a Ray cluster (the driver pod's command)")
    driver.add_argument("--spec", required=True, help="the experiment (a TuneExperiment document or a normalised spec JSON)")
    driver.add_argument("--name", help="experiment name when --spec holds only the spec")
    driver.add_argument("--namespace", default=os.environ.get("KUBETUNE_NAMESPACE"))
    driver.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else an embedded Ray)")
    driver.add_argument("--patch-status", action="store_true", help="patch the TuneExperiment's status through the Kubernetes API")
    driver.add_argument("--verbose", action="store_true", help="let Ray's, Tune's and the searchers' own log lines through")
    driver.set_defaults(func=_with_extras("driver", cmd_driver))

    operator = sub.add_parser("operator", help="run the kopf operator")
    operator.add_argument("--namespace", action="append", help="namespace to watch (repeatable; default all or KUBETUNE_WATCH_NAMESPACES)")
    operator.set_defaults(func=_with_extras("operator", cmd_operator))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
