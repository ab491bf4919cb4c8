"""The operator's settings: one object, read from `KUBETUNE_*` environment variables.

Every field documents itself (`help`) and names its variable (`env`); `Settings.from_env()` parses
them and `settings_table()` renders the reference in operator/README.md. Bad values fail at start-up
with the variable's name, never later in a handler.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

ENV_PREFIX = "KUBETUNE_"


class SettingsError(ValueError):
    """A `KUBETUNE_*` variable with a value the operator cannot use."""


def _setting(default: Any, help: str, env: str | None = None) -> Any:
    kwargs: dict[str, Any] = {"metadata": {"help": help, "env": env}}
    if isinstance(default, (list, dict)):
        kwargs["default_factory"] = lambda: type(default)(default)
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass(frozen=True)
class Settings:
    """What an operator deployment may change; the Helm chart (charts/kubetune) sets these."""

    trial_image: str = _setting(
        "ghcr.io/kubetune/kubetune-trial:0.1.0",
        "Image of the Ray head, workers and driver when the experiment sets neither "
        "spec.trainable.image nor spec.rayCluster.image.")
    image_pull_policy: str = _setting(
        "IfNotPresent", "imagePullPolicy of every container the operator creates.")
    watch_namespaces: tuple[str, ...] = _setting(
        (), "Comma-separated namespaces to watch; empty watches all namespaces (cluster-wide, needs the "
        "ClusterRole). With namespaces listed the operator needs only Roles there (the chart's watchNamespaces) "
        "and reads nothing cluster-wide. `kubetune operator --namespace` overrides it.")
    metrics_port: int = _setting(
        9090, "Port of the operator's Prometheus /metrics endpoint; 0 disables it.")
    probe_port: int = _setting(
        8080, "Port of the liveness endpoint /healthz (kopf's probe); 0 disables it.")
    delete_ray_cluster_on_finish: bool = _setting(
        True, "Default of spec.cleanup.deleteRayClusterOnFinish for experiments that leave it unset: "
        "delete the RayCluster when the experiment succeeds or fails (storage is always kept).")
    driver_backoff_limit: int = _setting(
        3, "backoffLimit of the driver Job: how often a failed driver pod is replaced (each "
        "replacement resumes from storage) before the experiment fails. The driver's exit codes 2 (bad spec) "
        "and 3 (every trial failed) fail at once.")
    driver_service_account: str = _setting(
        "kubetune-driver", "Service account of the driver pods; it needs the kubetune-driver Role "
        "(get tuneexperiments, patch tuneexperiments/status) in the experiment's namespace. Empty: the namespace's default.")
    driver_cpu: str = _setting("250m", "CPU request of the driver pod (it runs the search, not the trials); "
                               "small, so that head, driver and a worker fit a 2-CPU node.")
    driver_memory: str = _setting("1Gi", "Memory request and limit of the driver pod; raise it for large "
                                  "searches (many trials, a PBT population, a trainable that imports a lot).")
    status_interval_seconds: float = _setting(
        5.0, "Least seconds between two status patches by the driver (trial counts, best trial); "
        "passed to the driver pod as KUBETUNE_STATUS_INTERVAL.")
    ray_metrics_port: int = _setting(
        8080, "Ray's metrics-export-port on the head and workers (a container port named `metrics`).")
    ray_auth_mode: str = _setting(
        "token", "Ray token authentication: `token` (KubeRay's authOptions; the driver reads the token "
        "from the Secret KubeRay creates) or `disabled`.")
    autoscaler_idle_timeout_seconds: int = _setting(
        60, "With spec.rayCluster.enableAutoscaling: seconds before an idle worker is removed.")
    resync_seconds: float = _setting(
        60.0, "Seconds between periodic re-checks of every experiment (a safety net: children's "
        "events trigger the operator at once); 0 turns them off. No finalizer either way.")
    recheck_seconds: float = _setting(
        15.0, "Seconds between checks of an experiment that waits on something no watch reports: pods not "
        "starting (a missing Secret, an image that cannot be pulled, pods refused by Pod Security or a quota), "
        "a missing driver service account. Also how long the scheduler may refuse a pod (`Unschedulable`) before "
        "the status names it.")
    error_backoff_seconds: float = _setting(
        10.0, "Seconds before a reconcile that failed unexpectedly (e.g. the API server was away) is retried.")
    log_level: str = _setting("INFO", "Log level of the operator: DEBUG, INFO, WARNING or ERROR.")
    allowed_service_accounts: tuple[str, ...] = _setting(
        (), "Comma-separated service accounts that spec.rayCluster.serviceAccountName may name; `*` allows any. "
        "Empty: none, the Ray pods run as the namespace's `default` (a service account carries API permissions "
        "that the experiment's author may not have).")
    allowed_image_prefixes: tuple[str, ...] = _setting(
        ("*",), "Comma-separated prefixes that spec.trainable.image and spec.rayCluster.image must start with, "
        "e.g. `registry.example.com/ml/`; `*` allows any image. KUBETUNE_TRIAL_IMAGE is always allowed.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then `KUBETUNE_*` variables, then explicit overrides (e.g. CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(f)
            raw = environ.get(name)
            if raw is None:
                continue
            try:
                values[f.name] = _parse(f, raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.ray_auth_mode not in ("token", "disabled"):
            raise SettingsError(f"{ENV_PREFIX}RAY_AUTH_MODE must be token or disabled, got {self.ray_auth_mode!r}")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(f"{ENV_PREFIX}IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, got {self.image_pull_policy!r}")
        for name in ("metrics_port", "probe_port", "ray_metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be a port number, got {port}")
        if self.driver_backoff_limit < 0:
            raise SettingsError(f"{ENV_PREFIX}DRIVER_BACKOFF_LIMIT must be at least 0, got {self.driver_backoff_limit}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

    def service_account_allowed(self, name: str) -> bool:
        return "*" in self.allowed_service_accounts or name in self.allowed_service_accounts

    def image_allowed(self, image: str) -> bool:
        return (image == self.trial_image or "*" in self.allowed_image_prefixes
                or any(image.startswith(prefix) for prefix in self.allowed_image_prefixes))


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raw = raw.strip()
    if kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind == "int":
        return int(raw)
    if kind == "float":
        value = float(raw)
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if kind.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw


def settings_table() -> str:
    """The Markdown reference of every setting (operator/README.md embeds it)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = ",".join(default) if isinstance(default, tuple) else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(f"| `{env_name(f)}` | {f'`{shown}`' if shown else '(empty)'} | {f.metadata['help']} |")
    return "\n".join(rows)
