"""`kubetune operator`: run the kopf operator with the settings from `KUBETUNE_*` variables.

Watches all namespaces (cluster-wide) unless KUBETUNE_WATCH_NAMESPACES or `--namespace` lists some.
Serves kopf's liveness probe on KUBETUNE_PROBE_PORT (/healthz) and Prometheus metrics on
KUBETUNE_METRICS_PORT (/metrics). Credentials: the pod's service account, else KUBECONFIG.
"""

from __future__ import annotations

import argparse
import logging
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
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=settings.clusterwide,
        namespaces=list(settings.watch_namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.probe_port}/healthz" if settings.probe_port else None,
    )
    return 0
