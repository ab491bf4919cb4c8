"""Checks that span several fields; each issue names the field path under `spec`."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from kubetune.api.errors import FieldIssue

if TYPE_CHECKING:
    from kubetune.api.spec import TuneExperimentSpec

# Which parameter kinds each search algorithm can sample (what Ray Tune's converters accept).
DISCRETE = ("choice", "grid", "powersOfTwo")
SUPPORTED_KINDS = {
    "random": None,  # everything
    "grid": DISCRETE,
    "hyperopt": ("uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn",
                 "randint", "qrandint", "lograndint", "qlograndint", "choice", "powersOfTwo"),
    "optuna": ("uniform", "quniform", "loguniform", "randint", "qrandint", "lograndint",
               "choice", "powersOfTwo"),
    "bayesopt": ("uniform",),
}
MODEL_BASED = ("hyperopt", "optuna", "bayesopt")


def spec_issues(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    issues: list[FieldIssue] = []
    issues += _search_space_issues(spec)
    issues += _scheduler_issues(spec)
    issues += _storage_issues(spec)
    return issues


def _search_space_issues(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    issues = []
    algorithm = spec.search.algorithm
    allowed = SUPPORTED_KINDS[algorithm]
    for name, param in spec.parameters.items():
        kind = param.kind
        if allowed is not None and kind not in allowed:
            if kind == "grid":
                hint = "grid values need search.algorithm random or grid; use choice to let the searcher pick"
            elif algorithm == "grid":
                hint = "search.algorithm grid needs discrete values: choice, grid or powersOfTwo"
            else:
                hint = f"search.algorithm {algorithm} supports only {', '.join(allowed)}"
            issues.append(FieldIssue(f"parameters.{name}.{kind}", hint))
    for i, point in enumerate(spec.search.points_to_evaluate):
        unknown = sorted(set(point) - set(spec.parameters))
        if unknown:
            issues.append(FieldIssue(
                f"search.pointsToEvaluate[{i}]",
                f"unknown parameter(s) {', '.join(unknown)}; parameters are: {', '.join(spec.parameters) or 'none'}",
            ))
    if spec.search.random_warmup_steps is not None and algorithm not in MODEL_BASED:
        issues.append(FieldIssue(
            "search.randomWarmupSteps",
            f"only used by {', '.join(MODEL_BASED)}, not by search.algorithm {algorithm}",
        ))
    if not spec.parameters and algorithm != "random":
        issues.append(FieldIssue("parameters", f"search.algorithm {algorithm} needs at least one parameter"))
    return issues


def _scheduler_issues(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    issues = []
    used = sched.FIELDS_BY_TYPE[sched.type]
    for field in sorted(sched.fields_set_by_alias()):
        if field not in used:
            detail = f"it uses: {', '.join(used)}" if used else "it takes no options"
            issues.append(FieldIssue(f"scheduler.{field}", f"not used by scheduler type {sched.type} ({detail})"))
    if sched.type == "asha" and sched.max_t is not None and sched.grace_period is not None:
        if sched.max_t < sched.grace_period:
            issues.append(FieldIssue(
                "scheduler.maxT", f"must be at least gracePeriod ({sched.grace_period}), got {sched.max_t}"
            ))
    if sched.type in ("pbt", "pb2"):
        if sched.perturbation_interval is None:
            issues.append(FieldIssue("scheduler.perturbationInterval", f"required by scheduler type {sched.type}"))
        elif spec.checkpoint.frequency == 0 or sched.perturbation_interval % spec.checkpoint.frequency:
            issues.append(FieldIssue(
                "scheduler.perturbationInterval",
                f"must be a multiple of checkpoint.frequency ({spec.checkpoint.frequency}) so that "
                "every perturbation has a checkpoint to copy",
            ))
    if sched.type == "pbt":
        if not sched.hyperparam_mutations:
            issues.append(FieldIssue("scheduler.hyperparamMutations", "pbt needs at least one hyperparameter to mutate"))
        for name, mutation in (sched.hyperparam_mutations or {}).items():
            if isinstance(mutation, list) and not mutation:
                issues.append(FieldIssue(f"scheduler.hyperparamMutations.{name}", "must list at least one value"))
            elif not isinstance(mutation, list) and mutation.kind == "grid":
                issues.append(FieldIssue(f"scheduler.hyperparamMutations.{name}.grid", "use choice: pbt resamples, it does not enumerate a grid"))
    if sched.type == "pb2":
        if not sched.hyperparam_bounds:
            issues.append(FieldIssue("scheduler.hyperparamBounds", "pb2 needs at least one [min, max] bound"))
        for name, (low, high) in (sched.hyperparam_bounds or {}).items():
            if not low < high:
                issues.append(FieldIssue(f"scheduler.hyperparamBounds.{name}", f"min must be below max, got [{low}, {high}]"))
    return issues


def _storage_issues(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    storage = spec.storage
    issues = []
    uri = storage.uri or ""
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        issues.append(FieldIssue("storage.uri", f"must be a local path, file:// or s3://bucket/prefix, got {uri!r}"))
    if uri.startswith("s3://") and not urlparse(uri).netloc:
        issues.append(FieldIssue("storage.uri", f"an s3:// URI needs a bucket, e.g. s3://my-bucket/experiments; got {uri!r}"))
    if not storage.is_s3:
        for field, value in (("endpoint", storage.endpoint), ("region", storage.region), ("secretRef", storage.secret_ref)):
            if value is not None:
                issues.append(FieldIssue(f"storage.{field}", "only used with an s3:// storage.uri"))
    if storage.endpoint is not None:
        parsed = urlparse(storage.endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            issues.append(FieldIssue("storage.endpoint", f"must be an http:// or https:// URL, got {storage.endpoint!r}"))
    return issues
