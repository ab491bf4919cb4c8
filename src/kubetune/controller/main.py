"""`kubetune operator`: run the kopf operator with the settings from `KUBETUNE_*` variables.

Watches all namespaces (cluster-wide) unless KUBETUNE_WATCH_NAMESPACES or `--namespace` lists some.
Serves kopf's liveness probe on KUBETUNE_PROBE_PORT (/healthz) and Prometheus metrics on
KUBETUNE_METRICS_PORT (/metrics). Credentials: the pod's service account, else KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kubetune.controller.settings import Settings, SettingsError


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(watch_namespaces=tuple(args.namespace) if getattr(args, "namespace", None) else None)
    except SettingsError as exc:
        print(f"kubetune operator: {exc}", file=sys.stderr)
        return 2

    import kopf

    from kubetune.controller import handlers

    level = settings.log_level.upper()
    # Timestamps on every line; kopf's per-handler "succeeded" lines only at DEBUG (the operator logs its
    # own actions and events), its warnings and errors (a handler failing, retries) always.
    kopf.configure(debug=level == "DEBUG", quiet=level in ("WARNING", "ERROR"), log_format=kopf.LogFormat.FULL)
    logging.getLogger().setLevel(level)
    if level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The Kubernetes client logs every request at DEBUG; keep it to the operator's own messages.
    logging.getLogger("kubernetes").setLevel(max(logging.INFO, logging.getLogger().level))
    log = logging.getLogger("kubetune.operator")

    registry = handlers.register(settings)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        from kubetune.metrics import init_operator_series

        init_operator_series()
        start_http_server(settings.metrics_port)
    scope = "all namespaces" if settings.clusterwide else "namespaces " + ", ".join(settings.watch_namespaces)
    log.info("kubetune operator watching %s; trial image %s", scope, settings.trial_image)
    return _run_until_signalled(lambda stop_flag: kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=list(settings.watch_namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.probe_port}/healthz" if settings.probe_port else None,
        stop_flag=stop_flag,
    ), log)


def _run_until_signalled(run_operator, log: logging.Logger) -> int:
    """Run kopf in a thread; SIGINT/SIGTERM stop it gracefully and the exit code says which (130/143).

    kopf's own signal handling (main thread only) ends with exit 0, which reads as "finished" to whoever
    stopped the pod. The operator keeps no state of its own to save: everything is in the API server.
    """
    import signal
    import threading

    from kubetune.api import exitcodes

    # kopf warns that it ignores signals when not in the main thread: here the main thread handles them.
    logging.getLogger("kopf._core.reactor.running").addFilter(lambda r: "OS signals are ignored" not in r.getMessage())
    stop_flag = threading.Event()
    received: list[int] = []
    codes = {signal.SIGINT: exitcodes.INTERRUPTED, signal.SIGTERM: exitcodes.TERMINATED}

    def on_signal(signum: int, _frame: object) -> None:
        if received:  # a second signal: stop now
            os._exit(codes[signum])
        received.append(signum)
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop_flag.set()

    for signum in codes:
        signal.signal(signum, on_signal)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run_operator(stop_flag)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="kopf", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)  # wake up regularly so the main thread runs the signal handlers
    if received:
        return codes[received[0]]
    if failure:
        raise failure[0]
    return 0
