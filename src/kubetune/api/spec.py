"""The TuneExperiment spec: the single source of truth.

The CRD's openAPIV3Schema is generated from these models (`kubetune crd`), the operator and the
driver both parse through them, and the README's spec reference is checked against them.
Field docstrings become the descriptions that `kubectl explain` shows.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune.api.errors import FieldIssue, SemanticErrors
from kubetune.api.rules import Cel, add_validations, cel, in_schema

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "TuneExperiment"
PLURAL = "tuneexperiments"
SHORT_NAME = "tunex"

SEARCH_ALGORITHMS = ("random", "grid", "hyperopt", "optuna", "bayesopt")
SCHEDULER_TYPES = ("fifo", "asha", "hyperband", "medianStopping", "pbt", "pb2")

# A Kubernetes resource quantity such as 500m, 2, 8Gi or 1.5 (as the API server's isQuantity, unsigned).
_QUANTITY_RE = re.compile(r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")

# Caps on what is otherwise unbounded: they keep the CRD's CEL rules within the API server's cost
# budget and a spec far below what the API server and kopf's bookkeeping hold (see README, "Limits").
MAX_NAME = 253  # a Kubernetes object name
MAX_TEXT = 1024  # URIs, endpoints, entrypoints
MAX_PARAMETERS = 64  # search-space dimensions (and PBT/PB2 hyperparameters)
MAX_VALUES = 1000  # values of one choice or grid list
MAX_CONFIG_KEYS = 256  # top-level keys of trainable.config
MAX_POINTS = 64  # search.pointsToEvaluate
MAX_WORKER_GROUPS = 16
MAX_MAP = 64  # node selectors, rayStartParams
MAX_TOLERATIONS = 32
_DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Regexes checked by Python and, as CEL, by the API server (RE2: the same syntax; no backslashes, which
# CEL strings would need escaped). The CEL rule concatenates 40-character pieces so that its YAML folds.
# A container image reference as the distribution spec's grammar has it: [registry[:port]/]path[:tag][@digest].
IMAGE_REFERENCE = (
    (r"^(([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)([.][a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
     r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*",
     r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@[a-z0-9]+([+._-][a-z0-9]+)*:[a-fA-F0-9]{32,})?$"),
    "must be an image reference such as registry.example.com:5000/team/trials:1.2 "
    "(lowercase path, optional tag and sha256 digest)",
)
# A Ray version: 2.60.0, 2.9, 3.0.0rc1, 2.60.0.dev0.
RAY_VERSION = ((r"^[0-9]+[.][0-9]+([.][0-9]+)?([.-]?[a-zA-Z0-9]+)*$",), "must be a Ray version such as 2.60.0")
ENTRYPOINT = ((r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",),
              'must be "package.module:function", e.g. kubetune_trials.mnist:train')
DNS_LABEL = ((_DNS_LABEL_RE,),
             "must be a DNS label: lowercase letters, digits and -, starting and ending with a letter or digit")
OBJECT_NAME = ((r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",),
               "must be a Kubernetes object name: lowercase letters, digits, - and .")

Image = Annotated[str, StringConstraints(max_length=512)]


def _check_format(value: str | None, fmt: tuple[tuple[str, ...], str]) -> str | None:
    pieces, words = fmt
    if value is not None and not re.match("".join(pieces), value):
        raise ValueError(f"{words}, got {value!r}")
    return value


def _format_cel(field: str, fmt: tuple[tuple[str, ...], str]) -> Cel:
    pieces, words = fmt
    whole = "".join(pieces)
    regex = " + ".join(f"'{whole[i:i + 40]}'" for i in range(0, len(whole), 40))
    return Cel(f"!has(self.{field}) || self.{field}.matches({regex})", words, f".{field}",
               f"'{words}, got ' + self.{field}")

# `ray start` parameters whose value must be a number; KubeRay passes them as strings.
NUMERIC_RAY_START_PARAMS = {
    "num-cpus": (r"^[0-9]+([.][0-9]+)?$", "a number of CPUs, e.g. 4 or 0.5"),
    "num-gpus": (r"^[0-9]+([.][0-9]+)?$", "a number of GPUs, e.g. 1"),
    "memory": (r"^[0-9]+$", "a whole number of bytes, e.g. 8589934592"),
    "object-store-memory": (r"^[0-9]+$", "a whole number of bytes, e.g. 2147483648"),
}


def _ray_start_params_cel() -> list[Cel]:
    return [
        # CEL strings in double quotes, so the generated YAML needs no escaping
        Cel(f'!has(self.rayStartParams) || self.rayStartParams.all(k, k != "{key}" || '
            f'self.rayStartParams[k].matches("{pattern}"))',
            f"must be {words}", f".rayStartParams['{key}']",
            f'"must be {words}, got " + self.rayStartParams["{key}"]')
        for key, (pattern, words) in NUMERIC_RAY_START_PARAMS.items()
    ]


def _quantity_cel(field: str) -> Cel:
    return Cel(f"!has(self.{field}) || isQuantity(string(self.{field}))",
               "must be a Kubernetes quantity (e.g. 500m, 2, 8Gi)", f".{field}",
               f"string(self.{field}) + ' is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)'")


def _gpu_fraction_cel(field: str) -> Cel:
    return Cel(f"!has(self.{field}) || self.{field} <= 1.0 || self.{field} == double(int(self.{field}))",
               "a GPU fraction must be at most 1 (or a whole number of GPUs)", f".{field}")


def _check_ray_start_params(params: dict[str, str]) -> dict[str, str]:
    issues = []
    for key, value in params.items():
        pattern, allowed = NUMERIC_RAY_START_PARAMS.get(key, (None, None))
        if pattern and not re.match(pattern, value):
            issues.append(FieldIssue(key, f"must be {allowed}, got {value!r}"))
    if issues:
        raise SemanticErrors(issues)
    return params


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,  # Python code may build a status with snake_case names
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        json_schema_extra=add_validations,  # the CEL twins of the model's checks (rules.py)
    )

    def dump(self) -> dict[str, Any]:
        """The normalised wire form: camelCase, JSON types, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SpecModel(Model):
    """A part of the spec: only the CRD's camelCase names are accepted (errors suggest them for snake_case)."""

    model_config = ConfigDict(populate_by_name=False)


Quantity = Annotated[
    Union[str, int],
    # maxLength bounds the CEL cost of isQuantity(); the regex below refuses longer strings anyway
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "maxLength": 64}),
]


def _check_quantity(value: str | int | None) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


def quantity_value(value: str | int) -> float:
    """500m -> 0.5, 8Gi -> 8589934592.0."""
    if isinstance(value, int):
        return float(value)
    m = _QUANTITY_RE.match(value)
    assert m, value
    number, suffix = float(m.group(1)), m.group(2) or ""
    factors = {
        "": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }
    if suffix[:1] in ("e", "E") and suffix not in factors:
        return number * 10 ** int(suffix[1:])
    return number * factors[suffix]


def quantity_to_bytes(value: str | int) -> int:
    """8Gi -> 8589934592; used for Ray's memory resource."""
    return int(quantity_value(value))


# ---------------------------------------------------------------- parameters (search space)


class Bounds(SpecModel):
    """A min below a max: what Range and IntRange check alike (each types and documents the two)."""

    @model_validator(mode="after")
    @cel(Cel("self.min < self.max", "must be greater than min", ".max"))
    def _ordered(self) -> "Bounds":
        if not self.min < self.max:
            raise SemanticErrors([FieldIssue("max", f"must be greater than min ({self.min}), got {self.max}")])
        return self


class Range(Bounds):
    """A continuous range [min, max)."""

    min: float
    """Lower bound (inclusive)."""
    max: float
    """Upper bound (exclusive)."""


class QRange(Range):
    """A continuous range rounded to a multiple of q."""

    q: float = Field(gt=0)
    """Quantisation step: values are rounded to a multiple of q."""


class LogRange(Range):
    """A range sampled uniformly in log space (the base does not change the distribution); bounds positive."""

    min: float = Field(gt=0)
    """Lower bound (inclusive), greater than 0."""


class QLogRange(LogRange):
    """A log-space range rounded to a multiple of q."""

    q: float = Field(gt=0)
    """Quantisation step."""


class Normal(SpecModel):
    """A normal distribution."""

    mean: float = 0.0
    """Mean."""
    sd: float = Field(default=1.0, gt=0)
    """Standard deviation, greater than 0."""


class QNormal(Normal):
    """A normal distribution rounded to a multiple of q."""

    q: float = Field(gt=0)
    """Quantisation step."""


class IntRange(Bounds):
    """An integer range [min, max], both bounds inclusive."""

    min: int
    """Lower bound (inclusive)."""
    max: int
    """Upper bound (inclusive)."""


class QIntRange(IntRange):
    """An integer range [min, max] in steps of q."""

    q: int = Field(gt=0)
    """Step."""


class LogIntRange(IntRange):
    """An integer range [min, max] sampled in log space; min must be at least 1."""

    min: int = Field(ge=1)
    """Lower bound (inclusive), at least 1."""


class QLogIntRange(LogIntRange):
    """A log-space integer range in steps of q."""

    q: int = Field(gt=0)
    """Step."""


class PowersOfTwo(SpecModel):
    """A choice among the powers of two from min to max, e.g. 4, 8, ..., 256 (as in the CIFAR10 tutorial's l1/l2)."""

    min: int = Field(ge=1)
    """Smallest value, a power of two."""
    max: int = Field(ge=1)
    """Largest value, a power of two."""

    @field_validator("min", "max")
    @classmethod
    @cel(*(Cel(f"self.{f} in {[2**k for k in range(63)]}", "must be a power of two (1, 2, 4, 8, ...)", f".{f}")
           for f in ("min", "max")))
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (1, 2, 4, 8, ...), got {value}")
        return value

    @model_validator(mode="after")
    @cel(Cel("self.min <= self.max", "must be at least min", ".max"))
    def _ordered(self) -> "PowersOfTwo":
        if self.min > self.max:
            raise SemanticErrors([FieldIssue("max", f"must be at least min ({self.min}), got {self.max}")])
        return self

    def values(self) -> list[int]:
        return [2**k for k in range(int(math.log2(self.min)), int(math.log2(self.max)) + 1)]


# Field name -> (model, Ray Tune function); the tune layer maps these, the CRD documents them.
PARAMETER_KINDS = (
    "uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn",
    "randint", "qrandint", "lograndint", "qlograndint", "choice", "grid", "powersOfTwo",
)
CONTINUOUS_KINDS = ("uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn")
INTEGER_KINDS = ("randint", "qrandint", "lograndint", "qlograndint")
CATEGORICAL_KINDS = ("choice", "grid", "powersOfTwo")


class Parameter(SpecModel):
    """One hyperparameter: set exactly one of the distributions below."""

    uniform: Range | None = None
    """Float sampled uniformly in [min, max) (tune.uniform)."""
    quniform: QRange | None = None
    """Float sampled uniformly and rounded to a multiple of q (tune.quniform)."""
    loguniform: LogRange | None = None
    """Float sampled uniformly in log space (tune.loguniform)."""
    qloguniform: QLogRange | None = None
    """Log-space float rounded to a multiple of q (tune.qloguniform)."""
    randn: Normal | None = None
    """Float from a normal distribution (tune.randn)."""
    qrandn: QNormal | None = None
    """Normal float rounded to a multiple of q (tune.qrandn)."""
    randint: IntRange | None = None
    """Integer in [min, max] (tune.randint)."""
    qrandint: QIntRange | None = None
    """Integer in [min, max] in steps of q (tune.qrandint)."""
    lograndint: LogIntRange | None = None
    """Integer in [min, max] sampled in log space (tune.lograndint)."""
    qlograndint: QLogIntRange | None = None
    """Log-space integer in steps of q (tune.qlograndint)."""
    choice: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_VALUES)
    """One of these values, sampled by the search algorithm (tune.choice)."""
    grid: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_VALUES)
    """Every one of these values, each in its own trial (tune.grid_search); random and grid search only."""
    powers_of_two: PowersOfTwo | None = None
    """One of the powers of two between min and max (tune.choice over 2^k)."""

    @model_validator(mode="after")
    # choice and grid hold any JSON value, so CEL cannot see them; an object with exactly one field can
    @in_schema({"minProperties": 1, "maxProperties": 1})
    def _exactly_one(self) -> "Parameter":
        chosen = self.kinds_set()
        if len(chosen) != 1:
            got = ", ".join(chosen) if chosen else "none"
            raise SemanticErrors([FieldIssue("", f"set exactly one of {', '.join(PARAMETER_KINDS)}; got {got}")])
        return self

    def kinds_set(self) -> list[str]:
        return [
            info.alias or name
            for name, info in type(self).model_fields.items()
            if getattr(self, name) is not None
        ]

    @property
    def kind(self) -> str:
        return self.kinds_set()[0]

    @property
    def body(self) -> Any:
        return getattr(self, to_snake(self.kind))


def to_snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


# ---------------------------------------------------------------- the experiment


class Trainable(SpecModel):
    """The training function every trial runs."""

    entrypoint: Annotated[str, StringConstraints(max_length=MAX_TEXT)]
    """The function to run, as "package.module:function"; it takes the trial's config dict."""
    config: dict[str, Any] = Field(default_factory=dict, max_length=MAX_CONFIG_KEYS)
    """Fixed settings passed to every trial; sampled parameters are added to (and override) these."""
    image: Image | None = None
    """Container image with the trainable (cluster runs); defaults to the operator's trial image."""

    @field_validator("image")
    @classmethod
    @cel(_format_cel("image", IMAGE_REFERENCE))
    def _image_reference(cls, value: str | None) -> str | None:
        return _check_format(value, IMAGE_REFERENCE)

    @field_validator("entrypoint")
    @classmethod
    @cel(_format_cel("entrypoint", ENTRYPOINT))
    def _entrypoint_format(cls, value: str) -> str:
        return _check_format(value, ENTRYPOINT)


class Objective(SpecModel):
    """What the search optimises."""

    metric: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    """Name of the reported metric to optimise, e.g. mean_accuracy."""
    mode: Literal["max", "min"]
    """Whether larger (max) or smaller (min) is better."""
    goal: float | None = None
    """Stop when a trial reaches this value (see stop.onGoal)."""


class Search(SpecModel):
    """The search algorithm and the trial budget."""

    algorithm: Literal["random", "grid", "hyperopt", "optuna", "bayesopt"] = "random"
    """Search algorithm: random, grid, hyperopt (TPE), optuna (TPE) or bayesopt (Gaussian process)."""
    num_samples: int = Field(default=10, ge=1)
    """Number of trials to run (for grid: how often to repeat the whole grid)."""
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    """At most this many trials at once; unset means as many as resources allow."""
    seed: int | None = None
    """Seed of the search algorithm (and of each trial's random generators) for reproducible runs."""
    points_to_evaluate: list[Annotated[dict[str, Any], Field(max_length=MAX_PARAMETERS)]] = Field(
        default_factory=list, max_length=MAX_POINTS)
    """Configurations to try first, e.g. a known good baseline."""
    random_warmup_steps: int | None = Field(default=None, ge=0)
    """Random trials before a model-based searcher (hyperopt, optuna, bayesopt) starts modelling."""


MutationValue = Union[Parameter, list[Any]]


class Scheduler(SpecModel):
    """The trial scheduler: which trials to stop early, pause or perturb."""

    type: Literal["fifo", "asha", "hyperband", "medianStopping", "pbt", "pb2"] = "fifo"
    """fifo (run every trial to the end), asha, hyperband, medianStopping, pbt or pb2."""
    max_t: int | None = Field(default=None, ge=1)
    """asha, hyperband: the most iterations a trial may run."""
    grace_period: int | None = Field(default=None, ge=1)
    """asha, medianStopping: iterations before a trial may be stopped (default 1)."""
    reduction_factor: float | None = Field(default=None, gt=1)
    """asha, hyperband: the fraction 1/reductionFactor of trials promoted at each rung (default 4 for asha, 3 for hyperband)."""
    brackets: int | None = Field(default=None, ge=1)
    """asha: number of brackets (default 1)."""
    min_samples_required: int | None = Field(default=None, ge=1)
    """medianStopping: trials needed before comparing to the median (default 3)."""
    perturbation_interval: int | None = Field(default=None, ge=1)
    """pbt, pb2: iterations between perturbations; a multiple of checkpoint.frequency."""
    hyperparam_mutations: dict[str, MutationValue] | None = Field(default=None, min_length=1, max_length=MAX_PARAMETERS)
    """pbt: per hyperparameter, a distribution or a list of values to resample or perturb from."""
    hyperparam_bounds: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] | None = Field(
        default=None, max_length=MAX_PARAMETERS)
    """pb2: per continuous hyperparameter, its [min, max] bounds."""
    quantile_fraction: float | None = Field(default=None, gt=0, le=0.5)
    """pbt, pb2: fraction of trials that are the top/bottom quantile (default 0.25)."""
    resample_probability: float | None = Field(default=None, ge=0, le=1)
    """pbt: probability of resampling from the distribution instead of perturbing (default 0.25)."""

    # Which fields each scheduler type understands; anything else set is an error.
    FIELDS_BY_TYPE: ClassVar[dict[str, tuple[str, ...]]] = {
        "fifo": (),
        "asha": ("maxT", "gracePeriod", "reductionFactor", "brackets"),
        "hyperband": ("maxT", "reductionFactor"),
        "medianStopping": ("gracePeriod", "minSamplesRequired"),
        "pbt": ("perturbationInterval", "hyperparamMutations", "quantileFraction", "resampleProbability"),
        "pb2": ("perturbationInterval", "hyperparamBounds", "quantileFraction"),
    }

    def fields_set_by_alias(self) -> list[str]:
        fields = type(self).model_fields
        return [fields[name].alias or name for name in self.model_fields_set if name != "type"]


class Stop(SpecModel):
    """When trials, or the whole experiment, stop."""

    max_iterations: int | None = Field(default=None, ge=1)
    """Stop each trial after this many reported iterations."""
    time_budget_seconds: float | None = Field(default=None, gt=0)
    """Stop the whole experiment after this many seconds."""
    on_goal: Literal["experiment", "trial", "none"] = "experiment"
    """When a trial reaches objective.goal: stop the experiment (as Katib does), only that trial, or nothing."""


class TrialResources(SpecModel):
    """Resources of one trial (with distributed: of each of its workers)."""

    cpu: float = Field(default=1.0, gt=0)
    """CPUs, fractions allowed."""
    gpu: float = Field(default=0.0, ge=0)
    """GPUs: a fraction up to 1 (GPU sharing, e.g. 0.25) or a whole number."""
    memory: Quantity | None = None
    """Memory reserved in Ray's scheduler, e.g. 2Gi."""

    @field_validator("memory")
    @classmethod
    @cel(_quantity_cel("memory"))
    def _memory_quantity(cls, value: str | int | None) -> str | int | None:
        return _check_quantity(value)

    @field_validator("gpu")
    @classmethod
    @cel(_gpu_fraction_cel("gpu"))
    def _gpu_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a GPU fraction must be at most 1 (or a whole number of GPUs), got {value}")
        return value


class Distributed(SpecModel):
    """Data-parallel training per trial: a Ray Train TorchTrainer with several workers (DDP)."""

    workers: int = Field(default=2, ge=1)
    """Workers per trial."""
    gpus_per_worker: float | None = Field(default=None, ge=0)
    """GPUs per worker (default trialResources.gpu)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto picks nccl with GPUs and gloo without."""

    @field_validator("gpus_per_worker")
    @classmethod
    @cel(_gpu_fraction_cel("gpusPerWorker"))
    def _gpu_fraction(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError(f"a GPU fraction must be at most 1 (or a whole number of GPUs), got {value}")
        return value


class Checkpoint(SpecModel):
    """How trials checkpoint."""

    num_to_keep: int | None = Field(default=None, ge=1)
    """Checkpoints kept per trial (the best by the objective); unset keeps all."""
    frequency: int = Field(default=1, ge=0)
    """Checkpoint every this many iterations; 0 disables periodic checkpoints."""
    at_end: bool = True
    """Also checkpoint a trial's last iteration."""


class Failure(SpecModel):
    """What happens when a trial fails."""

    max_retries: int = Field(default=0, ge=-1)
    """Times to restart a failed trial from its last checkpoint; -1 retries forever."""


# The AWS SDK's switch for the EC2 instance metadata service; see Storage.skips_instance_metadata.
AWS_METADATA_ENV = "AWS_EC2_METADATA_DISABLED"


class Storage(SpecModel):
    """Where results and checkpoints go."""

    uri: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    """A local directory or s3://bucket/prefix; default ./kubetune-results locally."""
    endpoint: Annotated[str, StringConstraints(max_length=MAX_TEXT)] | None = None
    """S3 endpoint URL for MinIO or another S3-compatible store, e.g. http://minio:9000."""
    region: Annotated[str, StringConstraints(max_length=64)] | None = None
    """S3 region."""
    secret_ref: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = None
    """Name of a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (cluster runs)."""

    @field_validator("secret_ref")
    @classmethod
    @cel(_format_cel("secretRef", OBJECT_NAME))
    def _secret_name(cls, value: str | None) -> str | None:
        return _check_format(value, OBJECT_NAME)

    @property
    def is_s3(self) -> bool:
        return bool(self.uri and self.uri.startswith("s3://"))

    def skips_instance_metadata(self, has_credentials: bool) -> bool:
        """Whether S3 clients may be told not to ask the EC2 instance metadata service (AWS_METADATA_ENV).

        The AWS SDK asks it for credentials and region on every client creation: outside EC2 (a pod on
        another cloud, a laptop, MinIO) each ask waits for a timeout, 8 s to build and 4 s to copy an
        S3FileSystem in a pod (issue #10). It stays on only where it may be the one source of credentials:
        AWS S3 itself (no endpoint) and no keys or web identity of its own. One rule for the driver (its
        environment) and the operator (spec.storage.secretRef) alike.
        """
        return self.is_s3 and (has_credentials or bool(self.endpoint))


class Toleration(SpecModel):
    """A Kubernetes toleration."""

    key: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = None
    """Taint key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal."""
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound."""


class RayGroup(SpecModel):
    """What the head and every worker group set alike: their pods' size and placement, `ray start` parameters."""

    cpu: Quantity
    """CPU request and limit."""
    memory: Quantity
    """Memory request and limit."""
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=MAX_MAP)
    """Node selector, e.g. a GPU node pool."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_TOLERATIONS)
    """Tolerations, e.g. for tainted GPU nodes."""
    ray_start_params: dict[str, Annotated[str, StringConstraints(max_length=MAX_TEXT)]] = Field(
        default_factory=dict, max_length=MAX_MAP)
    """Extra `ray start` parameters."""

    @field_validator("cpu", "memory")
    @classmethod
    @cel(_quantity_cel("cpu"), _quantity_cel("memory"))
    def _quantities(cls, value: str | int) -> str | int:
        return _check_quantity(value)

    @field_validator("ray_start_params")
    @classmethod
    @cel(*_ray_start_params_cel())
    def _ray_start_params(cls, params: dict[str, str]) -> dict[str, str]:
        return _check_ray_start_params(params)


class HeadGroup(RayGroup):
    """The Ray head pod."""

    cpu: Quantity = "2"
    """CPU request and limit."""
    memory: Quantity = "8Gi"
    """Memory request and limit."""


class WorkerGroup(RayGroup):
    """A group of identical Ray worker pods."""

    name: Annotated[str, StringConstraints(max_length=30)]
    """Group name, a DNS label."""
    replicas: int = Field(default=1, ge=0)
    """Initial number of workers."""
    min_replicas: int = Field(default=0, ge=0)
    """Fewest workers the autoscaler keeps."""
    max_replicas: int | None = Field(default=None, ge=0)
    """Most workers the autoscaler starts (default replicas)."""
    cpu: Quantity = "4"
    """CPU request and limit per worker."""
    memory: Quantity = "16Gi"
    """Memory request and limit per worker."""
    gpu: int = Field(default=0, ge=0)
    """GPUs per worker (requests and limits of gpuResource)."""
    gpu_resource: Annotated[str, StringConstraints(max_length=MAX_NAME)] = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""

    @field_validator("name")
    @classmethod
    @cel(_format_cel("name", DNS_LABEL))
    def _dns_label(cls, value: str) -> str:
        return _check_format(value, DNS_LABEL)

    @model_validator(mode="after")
    @cel(
        Cel("!has(self.maxReplicas) || @minReplicas <= self.maxReplicas", "must be at most maxReplicas", ".minReplicas"),
        Cel("@minReplicas <= @replicas && (!has(self.maxReplicas) || @replicas <= self.maxReplicas)",
            "must be between minReplicas and maxReplicas", ".replicas"),
    )
    def _replica_bounds(self) -> "WorkerGroup":
        issues = []
        top = self.max_replicas if self.max_replicas is not None else max(self.replicas, self.min_replicas)
        if self.min_replicas > top:
            issues.append(FieldIssue("minReplicas", f"must be at most maxReplicas ({top}), got {self.min_replicas}"))
        if not self.min_replicas <= self.replicas <= top:
            issues.append(FieldIssue("replicas", f"must be between minReplicas ({self.min_replicas}) and maxReplicas ({top}), got {self.replicas}"))
        if issues:
            raise SemanticErrors(issues)
        return self


class RayClusterSpec(SpecModel):
    """The Ray cluster the operator creates for the experiment (ignored by `kubetune run`)."""

    ray_version: Annotated[str, StringConstraints(max_length=64)] = "2.60.0"
    """Ray version of the image, passed to KubeRay."""
    image: Image | None = None
    """Image of head and workers; defaults to the trial image."""
    head: HeadGroup = Field(default_factory=HeadGroup)
    """The head pod."""
    worker_groups: list[WorkerGroup] = Field(default_factory=list, max_length=MAX_WORKER_GROUPS)
    """Worker groups; trials run on these (and on the head when there are none)."""
    enable_autoscaling: bool = False
    """Let KubeRay's in-tree autoscaler add and remove workers between minReplicas and maxReplicas."""
    service_account_name: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = None
    """Service account of the Ray pods."""

    @field_validator("service_account_name")
    @classmethod
    @cel(_format_cel("serviceAccountName", OBJECT_NAME))
    def _service_account_name(cls, value: str | None) -> str | None:
        return _check_format(value, OBJECT_NAME)

    @field_validator("ray_version")
    @classmethod
    @cel(_format_cel("rayVersion", RAY_VERSION))
    def _ray_version(cls, value: str) -> str:
        return _check_format(value, RAY_VERSION)

    @field_validator("image")
    @classmethod
    @cel(_format_cel("image", IMAGE_REFERENCE))
    def _image_reference(cls, value: str | None) -> str | None:
        return _check_format(value, IMAGE_REFERENCE)

    @field_validator("worker_groups")
    @classmethod
    @cel(Cel("!has(self.workerGroups) || self.workerGroups.all(g, self.workerGroups.exists_one(h, h.name == g.name))",
             "worker group names must be unique", ".workerGroups"))
    def _unique_names(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [g.name for g in groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"worker group names must be unique; repeated: {', '.join(dupes)}")
        return groups


class Cleanup(SpecModel):
    """What happens to the Ray cluster at the end."""

    delete_ray_cluster_on_finish: bool = True
    """Delete the RayCluster when the experiment succeeds or fails (storage is always kept)."""


class PodOverlay(SpecModel):
    """Additions to the pods of one role (driver, Ray head or Ray workers), merged over what the operator builds.

    The operator's pods meet Pod Security `restricted` by default (runAsNonRoot, runAsUser 1000,
    seccomp RuntimeDefault, no privilege escalation, every capability dropped); `securityContext` and
    `containerSecurityContext` are merged over those defaults key by key.
    """

    annotations: dict[str, str] = Field(default_factory=dict)
    """Pod annotations."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Pod labels (kubetune's own labels win)."""
    affinity: dict[str, Any] | None = None
    """A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity)."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Names of Secrets to pull the image with."""
    security_context: dict[str, Any] = Field(default_factory=dict)
    """A PodSecurityContext, merged over the restricted defaults."""
    container_security_context: dict[str, Any] = Field(default_factory=dict)
    """A SecurityContext for the main container, merged over the restricted defaults."""
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    """Extra pod volumes (Kubernetes Volume objects)."""
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    """Extra volumeMounts of the main container."""


class PodOverlays(SpecModel):
    """Per-role pod overlays (cluster runs; ignored by `kubetune run`)."""

    driver: PodOverlay = Field(default_factory=PodOverlay)
    """The driver Job's pod."""
    head: PodOverlay = Field(default_factory=PodOverlay)
    """The Ray head pod."""
    worker: PodOverlay = Field(default_factory=PodOverlay)
    """Every Ray worker pod."""


class TuneExperimentSpec(SpecModel):
    """A hyperparameter search: what to train, over which space, how to search and where to store."""

    trainable: Trainable
    """The training function."""
    objective: Objective
    """The metric to optimise."""
    parameters: dict[str, Parameter] = Field(default_factory=dict, max_length=MAX_PARAMETERS)
    """The search space: parameter name -> distribution; each trial's config gets these keys."""
    search: Search = Field(default_factory=Search)
    """Search algorithm and budget."""
    scheduler: Scheduler = Field(default_factory=Scheduler)
    """Trial scheduler."""
    stop: Stop = Field(default_factory=Stop)
    """Stopping rules."""
    trial_resources: TrialResources = Field(default_factory=TrialResources)
    """Resources per trial."""
    distributed: Distributed | None = None
    """Several workers per trial (Ray Train TorchTrainer, DDP); unset runs each trial in one process."""
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    """Checkpointing."""
    failure: Failure = Field(default_factory=Failure)
    """Trial retries."""
    storage: Storage = Field(default_factory=Storage)
    """Results and checkpoint storage."""
    ray_cluster: RayClusterSpec = Field(default_factory=RayClusterSpec)
    """The Ray cluster on Kubernetes."""
    cleanup: Cleanup = Field(default_factory=Cleanup)
    """Clean-up at the end."""
    suspend: bool = False
    """Suspend: remove the Ray cluster and driver, keep storage; set back to false to resume."""
    pods: PodOverlays = Field(default_factory=PodOverlays)
    """Per-role pod overlays: annotations, labels, affinity, priorityClassName, imagePullSecrets, securityContext, volumes."""

    @model_validator(mode="after")
    def _semantics(self) -> "TuneExperimentSpec":
        from kubetune.api.semantics import spec_issues

        issues = spec_issues(self)
        if issues:
            raise SemanticErrors(issues)
        return self


class ObjectMeta(BaseModel):
    """The parts of metadata kubetune reads; the rest (uid, resourceVersion, ...) passes through."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, StringConstraints(pattern=_DNS_LABEL_RE, max_length=40)]
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TuneExperiment(SpecModel):
    """A whole TuneExperiment document."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TuneExperiment"]
    metadata: ObjectMeta
    spec: TuneExperimentSpec
    status: dict[str, Any] | None = None


# The spec-wide checks register themselves (and their CEL) on import; _semantics runs them.
from kubetune.api import semantics as _semantics  # noqa: E402,F401
