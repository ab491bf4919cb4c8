"""Checks that span several fields; each issue names the field path under `spec`.

Each check is registered in CHECKS with its CEL twin (or why it has none, see rules.py), so the
API server refuses at `kubectl apply` what `kubetune validate` and the operator refuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from kubetune.api.errors import FieldIssue, suggest
from kubetune.api.rules import Cel, cel, operator_only
from kubetune.api.spec import PARAMETER_KINDS, Scheduler

if TYPE_CHECKING:
    from kubetune.api.spec import TuneExperimentSpec

Check = Callable[["TuneExperimentSpec"], list[FieldIssue]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def spec_issues(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    issues: list[FieldIssue] = []
    for fn in CHECKS:
        issues += fn(spec)
    return issues


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
POPULATION_BASED = ("pbt", "pb2")


# choice and grid lists hold any JSON value: CEL cannot see them (see _kinds_supported_by_algorithm).
UNTYPED_KINDS = ("choice", "grid")


def _kinds_cel(algorithm: str, allowed: tuple[str, ...]) -> Cel | None:
    bad = [k for k in PARAMETER_KINDS if k not in allowed and k not in UNTYPED_KINDS]
    if not bad:
        return None
    has_bad = " || ".join(f"has(self.parameters[n].{k})" for k in bad)
    return Cel(
        f"@search.algorithm != '{algorithm}' || !has(self.parameters) || self.parameters.all(n, !({has_bad}))",
        f"search.algorithm {algorithm} supports only {', '.join(allowed)}",
        ".parameters",
    )


# ---------------------------------------------------------------- search space


@check
@cel(
    *(c for a, allowed in SUPPORTED_KINDS.items() if allowed is not None and (c := _kinds_cel(a, allowed))),
    at="TuneExperimentSpec",
    except_for="grid with hyperopt or optuna, and choice or grid with bayesopt: choice and grid lists hold any "
               "JSON value, which the schema leaves untyped, so CEL cannot see them",
)
def _kinds_supported_by_algorithm(spec: "TuneExperimentSpec") -> list[FieldIssue]:
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
    return issues


@check
@operator_only(
    "a point maps parameter names to any JSON value: the schema leaves it untyped, so CEL cannot see its keys",
    at="TuneExperimentSpec",
)
def _points_name_parameters(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    issues = []
    for i, point in enumerate(spec.search.points_to_evaluate):
        unknown = sorted(set(point) - set(spec.parameters))
        if len(unknown) == 1 and spec.parameters:
            issues.append(FieldIssue(
                f"search.pointsToEvaluate[{i}].{unknown[0]}",
                f"unknown parameter(s) {unknown[0]}; {suggest(unknown[0], list(spec.parameters))}",
            ))
        elif unknown:
            issues.append(FieldIssue(
                f"search.pointsToEvaluate[{i}]",
                f"unknown parameter(s) {', '.join(unknown)}; parameters are: {', '.join(spec.parameters) or 'none'}",
            ))
    return issues


@check
@cel(Cel(
    f"!has(self.randomWarmupSteps) || @algorithm in {list(MODEL_BASED)}",
    f"only used by search.algorithm {', '.join(MODEL_BASED)}",
    ".randomWarmupSteps",
), at="Search")
def _warmup_needs_a_model(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    if spec.search.random_warmup_steps is not None and spec.search.algorithm not in MODEL_BASED:
        return [FieldIssue(
            "search.randomWarmupSteps",
            f"only used by {', '.join(MODEL_BASED)}, not by search.algorithm {spec.search.algorithm}",
        )]
    return []


@check
@cel(Cel(
    "@search.algorithm == 'random' || (has(self.parameters) && size(self.parameters) > 0)",
    "every search.algorithm but random needs at least one parameter",
    ".parameters",
), at="TuneExperimentSpec")
def _searcher_needs_parameters(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    if not spec.parameters and spec.search.algorithm != "random":
        return [FieldIssue("parameters", f"search.algorithm {spec.search.algorithm} needs at least one parameter")]
    return []


# ---------------------------------------------------------------- scheduler


def _unused_cel(kind: str, used: tuple[str, ...]) -> Cel:
    others = [f for f in _scheduler_options() if f not in used]
    detail = f"it uses only {', '.join(used)}" if used else "it takes no options"
    return Cel(f"@type != '{kind}' || !(" + " || ".join(f"has(self.{f})" for f in others) + ")",
               f"scheduler type {kind} does not use the other options ({detail})")


def _scheduler_options() -> list[str]:
    return [info.alias or name for name, info in Scheduler.model_fields.items() if name != "type"]


@check
@cel(*(_unused_cel(kind, used) for kind, used in Scheduler.FIELDS_BY_TYPE.items()), at="Scheduler")
def _options_of_the_scheduler(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    used = sched.FIELDS_BY_TYPE[sched.type]
    issues = []
    for field in sorted(sched.fields_set_by_alias()):
        if field not in used:
            detail = f"it uses: {', '.join(used)}" if used else "it takes no options"
            issues.append(FieldIssue(f"scheduler.{field}", f"not used by scheduler type {sched.type} ({detail})"))
    return issues


@check
@cel(Cel(
    "@type != 'asha' || !has(self.maxT) || !has(self.gracePeriod) || self.maxT >= self.gracePeriod",
    "must be at least gracePeriod",
    ".maxT",
), at="Scheduler")
def _max_t_after_grace_period(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    if sched.type == "asha" and sched.max_t is not None and sched.grace_period is not None:
        if sched.max_t < sched.grace_period:
            return [FieldIssue("scheduler.maxT", f"must be at least gracePeriod ({sched.grace_period}), got {sched.max_t}")]
    return []


@check
@cel(Cel(
    f"!(@type in {list(POPULATION_BASED)}) || has(self.perturbationInterval)",
    f"required by scheduler types {' and '.join(POPULATION_BASED)}",
    ".perturbationInterval",
), at="Scheduler")
def _population_needs_an_interval(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    if sched.type in POPULATION_BASED and sched.perturbation_interval is None:
        return [FieldIssue("scheduler.perturbationInterval", f"required by scheduler type {sched.type}")]
    return []


@check
@cel(Cel(
    f"!has(self.scheduler) || !has(self.scheduler.perturbationInterval) || !(@scheduler.type in {list(POPULATION_BASED)})"
    " || (@checkpoint.frequency != 0 && self.scheduler.perturbationInterval % @checkpoint.frequency == 0)",
    "must be a multiple of checkpoint.frequency (which must be above 0) so that every perturbation has a "
    "checkpoint to copy",
    ".scheduler.perturbationInterval",
), at="TuneExperimentSpec")
def _interval_on_checkpoints(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    if sched.type in POPULATION_BASED and sched.perturbation_interval is not None:
        if spec.checkpoint.frequency == 0 or sched.perturbation_interval % spec.checkpoint.frequency:
            return [FieldIssue(
                "scheduler.perturbationInterval",
                f"must be a multiple of checkpoint.frequency ({spec.checkpoint.frequency}) so that "
                "every perturbation has a checkpoint to copy",
            )]
    return []


@check
@cel(Cel(
    # with minProperties: 1 on the map (an untyped map has no size() in CEL)
    "@type != 'pbt' || has(self.hyperparamMutations)",
    "pbt needs at least one hyperparameter to mutate",
    ".hyperparamMutations",
), at="Scheduler")
def _pbt_needs_mutations(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    if spec.scheduler.type == "pbt" and not spec.scheduler.hyperparam_mutations:
        return [FieldIssue("scheduler.hyperparamMutations", "pbt needs at least one hyperparameter to mutate")]
    return []


@check
@operator_only(
    "a mutation is a distribution or a list of values: the schema keeps it untyped "
    "(x-kubernetes-preserve-unknown-fields), so CEL cannot tell an empty list or a grid from a distribution",
    at="Scheduler",
)
def _mutations_resample(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    issues = []
    for name, mutation in (spec.scheduler.hyperparam_mutations or {}).items():
        if isinstance(mutation, list) and not mutation:
            issues.append(FieldIssue(f"scheduler.hyperparamMutations.{name}", "must list at least one value"))
        elif not isinstance(mutation, list) and mutation.kind == "grid":
            issues.append(FieldIssue(f"scheduler.hyperparamMutations.{name}.grid", "use choice: pbt resamples, it does not enumerate a grid"))
    return issues


@check
@cel(
    Cel("@type != 'pb2' || (has(self.hyperparamBounds) && size(self.hyperparamBounds) > 0)",
        "pb2 needs at least one [min, max] bound", ".hyperparamBounds"),
    Cel("!has(self.hyperparamBounds) || self.hyperparamBounds.all(k, self.hyperparamBounds[k][0] < self.hyperparamBounds[k][1])",
        "each bound is [min, max] with min below max", ".hyperparamBounds"),
    at="Scheduler",
)
def _pb2_bounds(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    sched = spec.scheduler
    issues = []
    if sched.type == "pb2" and not sched.hyperparam_bounds:
        issues.append(FieldIssue("scheduler.hyperparamBounds", "pb2 needs at least one [min, max] bound"))
    for name, (low, high) in (sched.hyperparam_bounds or {}).items():
        if not low < high:
            issues.append(FieldIssue(f"scheduler.hyperparamBounds.{name}", f"min must be below max, got [{low}, {high}]"))
    return issues


# ---------------------------------------------------------------- storage

_S3_CEL = "(has(self.uri) && self.uri.startsWith('s3://'))"


@check
@cel(
    Cel("!has(self.uri) || !self.uri.contains('://') || self.uri.startsWith('s3://') || self.uri.startsWith('file://')",
        "must be a local path, file:// or s3://bucket/prefix", ".uri",
        "'must be a local path, file:// or s3://bucket/prefix, got ' + self.uri"),
    Cel("!has(self.uri) || !self.uri.startsWith('s3://') || self.uri.matches('^s3://[^/]')",
        "an s3:// URI needs a bucket, e.g. s3://my-bucket/experiments", ".uri",
        "'an s3:// URI needs a bucket, e.g. s3://my-bucket/experiments; got ' + self.uri"),
    at="Storage",
)
def _storage_uri(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    uri = spec.storage.uri or ""
    issues = []
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        issues.append(FieldIssue("storage.uri", f"must be a local path, file:// or s3://bucket/prefix, got {uri!r}"))
    if uri.startswith("s3://") and not urlparse(uri).netloc:
        issues.append(FieldIssue("storage.uri", f"an s3:// URI needs a bucket, e.g. s3://my-bucket/experiments; got {uri!r}"))
    return issues


@check
@cel(
    *(Cel(f"!has(self.{f}) || {_S3_CEL}", "only used with an s3:// storage.uri", f".{f}")
      for f in ("endpoint", "region", "secretRef")),
    at="Storage",
)
def _s3_options_need_s3(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    storage = spec.storage
    if storage.is_s3:
        return []
    return [FieldIssue(f"storage.{field}", "only used with an s3:// storage.uri")
            for field, value in (("endpoint", storage.endpoint), ("region", storage.region), ("secretRef", storage.secret_ref))
            if value is not None]


@check
@cel(Cel("!has(self.endpoint) || self.endpoint.matches('^https?://[^/?#]+')",
         "must be an http:// or https:// URL", ".endpoint", "'must be an http:// or https:// URL, got ' + self.endpoint"),
   at="Storage")
def _endpoint_is_a_url(spec: "TuneExperimentSpec") -> list[FieldIssue]:
    endpoint = spec.storage.endpoint
    if endpoint is not None:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            return [FieldIssue("storage.endpoint", f"must be an http:// or https:// URL, got {endpoint!r}")]
    return []
