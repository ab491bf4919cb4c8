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

API_GROUP = "kubetune.io"
API_VERSION = "v1alpha1"
KIND = "TuneExperiment"
PLURAL = "tuneexperiments"
SHORT_NAME = "tunex"

SEARCH_ALGORITHMS = ("random", "grid", "hyperopt", "optuna", "bayesopt")
SCHEDULER_TYPES = ("fifo", "asha", "hyperband", "medianStopping", "pbt", "pb2")

# A Kubernetes resource quantity such as 500m, 2, 8Gi or 1.5.
_QUANTITY_RE = re.compile(r"^([+]?[0-9.]+)([eE][-+]?[0-9]+|[mkMGTPE]i?|Ki|u|n)?$")
_DNS_LABEL_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def dump(self) -> dict[str, Any]:
        """The normalised wire form: camelCase, JSON types, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


Quantity = Annotated[
    Union[str, int],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


def _check_quantity(value: str | int | None) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


def quantity_to_bytes(value: str | int) -> int:
    """8Gi -> 8589934592; used for Ray's memory resource."""
    if isinstance(value, int):
        return value
    m = _QUANTITY_RE.match(value)
    assert m, value
    number, suffix = float(m.group(1)), m.group(2) or ""
    factors = {
        "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }
    if suffix.lower().startswith("e") and suffix not in factors:
        return int(number * 10 ** int(suffix[1:]))
    return int(number * factors[suffix])


# ---------------------------------------------------------------- parameters (search space)


class Range(Model):
    """A continuous range [min, max)."""

    min: float
    """Lower bound (inclusive)."""
    max: float
    """Upper bound (exclusive)."""

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not self.min < self.max:
            raise SemanticErrors([FieldIssue("max", f"must be greater than min ({self.min}), got {self.max}")])
        return self


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


class Normal(Model):
    """A normal distribution."""

    mean: float = 0.0
    """Mean."""
    sd: float = Field(default=1.0, gt=0)
    """Standard deviation, greater than 0."""


class QNormal(Normal):
    """A normal distribution rounded to a multiple of q."""

    q: float = Field(gt=0)
    """Quantisation step."""


class IntRange(Model):
    """An integer range [min, max], both bounds inclusive."""

    min: int
    """Lower bound (inclusive)."""
    max: int
    """Upper bound (inclusive)."""

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.min < self.max:
            raise SemanticErrors([FieldIssue("max", f"must be greater than min ({self.min}), got {self.max}")])
        return self


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


class PowersOfTwo(Model):
    """A choice among the powers of two from min to max, e.g. 4, 8, ..., 256 (as in the CIFAR10 tutorial's l1/l2)."""

    min: int = Field(ge=1)
    """Smallest value, a power of two."""
    max: int = Field(ge=1)
    """Largest value, a power of two."""

    @field_validator("min", "max")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (1, 2, 4, 8, ...), got {value}")
        return value

    @model_validator(mode="after")
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


class Parameter(Model):
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
    choice: list[Any] | None = None
    """One of these values, sampled by the search algorithm (tune.choice)."""
    grid: list[Any] | None = None
    """Every one of these values, each in its own trial (tune.grid_search); random and grid search only."""
    powers_of_two: PowersOfTwo | None = None
    """One of the powers of two between min and max (tune.choice over 2^k)."""

    @field_validator("choice", "grid")
    @classmethod
    def _not_empty(cls, values: list[Any] | None) -> list[Any] | None:
        if values is not None and not values:
            raise ValueError("must list at least one value")
        return values

    @model_validator(mode="after")
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


class Trainable(Model):
    """The training function every trial runs."""

    entrypoint: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    """The function to run, as "package.module:function"; it takes the trial's config dict."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Fixed settings passed to every trial; sampled parameters are added to (and override) these."""
    image: str | None = None
    """Container image with the trainable (cluster runs); defaults to the operator's trial image."""


class Objective(Model):
    """What the search optimises."""

    metric: Annotated[str, StringConstraints(min_length=1)]
    """Name of the reported metric to optimise, e.g. mean_accuracy."""
    mode: Literal["max", "min"]
    """Whether larger (max) or smaller (min) is better."""
    goal: float | None = None
    """Stop when a trial reaches this value (see stop.onGoal)."""


class Search(Model):
    """The search algorithm and the trial budget."""

    algorithm: Literal["random", "grid", "hyperopt", "optuna", "bayesopt"] = "random"
    """Search algorithm: random, grid, hyperopt (TPE), optuna (TPE) or bayesopt (Gaussian process)."""
    num_samples: int = Field(default=10, ge=1)
    """Number of trials to run (for grid: how often to repeat the whole grid)."""
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    """At most this many trials at once; unset means as many as resources allow."""
    seed: int | None = None
    """Seed of the search algorithm (and of each trial's random generators) for reproducible runs."""
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    """Configurations to try first, e.g. a known good baseline."""
    random_warmup_steps: int | None = Field(default=None, ge=0)
    """Random trials before a model-based searcher (hyperopt, optuna, bayesopt) starts modelling."""


MutationValue = Union[Parameter, list[Any]]


class Scheduler(Model):
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
    hyperparam_mutations: dict[str, MutationValue] | None = None
    """pbt: per hyperparameter, a distribution or a list of values to resample or perturb from."""
    hyperparam_bounds: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] | None = None
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


class Stop(Model):
    """When trials, or the whole experiment, stop."""

    max_iterations: int | None = Field(default=None, ge=1)
    """Stop each trial after this many reported iterations."""
    time_budget_seconds: float | None = Field(default=None, gt=0)
    """Stop the whole experiment after this many seconds."""
    on_goal: Literal["experiment", "trial", "none"] = "experiment"
    """When a trial reaches objective.goal: stop the experiment (as Katib does), only that trial, or nothing."""


class TrialResources(Model):
    """Resources of one trial (with distributed: of each of its workers)."""

    cpu: float = Field(default=1.0, gt=0)
    """CPUs, fractions allowed."""
    gpu: float = Field(default=0.0, ge=0)
    """GPUs: a fraction up to 1 (GPU sharing, e.g. 0.25) or a whole number."""
    memory: Quantity | None = None
    """Memory reserved in Ray's scheduler, e.g. 2Gi."""

    _memory_ok = field_validator("memory")(classmethod(lambda cls, v: _check_quantity(v)))

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"a GPU fraction must be at most 1 (or a whole number of GPUs), got {value}")
        return value


class Distributed(Model):
    """Data-parallel training per trial: a Ray Train TorchTrainer with several workers (DDP)."""

    workers: int = Field(default=2, ge=1)
    """Workers per trial."""
    gpus_per_worker: float | None = Field(default=None, ge=0)
    """GPUs per worker (default trialResources.gpu)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto picks nccl with GPUs and gloo without."""

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpu_fraction(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError(f"a GPU fraction must be at most 1 (or a whole number of GPUs), got {value}")
        return value


class Checkpoint(Model):
    """How trials checkpoint."""

    num_to_keep: int | None = Field(default=None, ge=1)
    """Checkpoints kept per trial (the best by the objective); unset keeps all."""
    frequency: int = Field(default=1, ge=0)
    """Checkpoint every this many iterations; 0 disables periodic checkpoints."""
    at_end: bool = True
    """Also checkpoint a trial's last iteration."""


class Failure(Model):
    """What happens when a trial fails."""

    max_retries: int = Field(default=0, ge=-1)
    """Times to restart a failed trial from its last checkpoint; -1 retries forever."""


class Storage(Model):
    """Where results and checkpoints go."""

    uri: str | None = None
    """A local directory or s3://bucket/prefix; default ./kubetune-results locally."""
    endpoint: str | None = None
    """S3 endpoint URL for MinIO or another S3-compatible store, e.g. http://minio:9000."""
    region: str | None = None
    """S3 region."""
    secret_ref: str | None = None
    """Name of a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (cluster runs)."""

    @property
    def is_s3(self) -> bool:
        return bool(self.uri and self.uri.startswith("s3://"))


class Toleration(Model):
    """A Kubernetes toleration."""

    key: str | None = None
    """Taint key."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal."""
    value: str | None = None
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect."""
    toleration_seconds: int | None = None
    """For NoExecute: how long the pod stays bound."""


class HeadGroup(Model):
    """The Ray head pod."""

    cpu: Quantity = "2"
    """CPU request and limit."""
    memory: Quantity = "8Gi"
    """Memory request and limit."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations."""
    ray_start_params: dict[str, str] = Field(default_factory=dict)
    """Extra `ray start` parameters."""

    _quantities = field_validator("cpu", "memory")(classmethod(lambda cls, v: _check_quantity(v)))


class WorkerGroup(Model):
    """A group of identical Ray worker pods."""

    name: Annotated[str, StringConstraints(pattern=_DNS_LABEL_RE, max_length=30)]
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
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector, e.g. a GPU node pool."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations, e.g. for tainted GPU nodes."""
    ray_start_params: dict[str, str] = Field(default_factory=dict)
    """Extra `ray start` parameters."""

    _quantities = field_validator("cpu", "memory")(classmethod(lambda cls, v: _check_quantity(v)))

    @model_validator(mode="after")
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


class RayClusterSpec(Model):
    """The Ray cluster the operator creates for the experiment (ignored by `kubetune run`)."""

    ray_version: str = "2.60.0"
    """Ray version of the image, passed to KubeRay."""
    image: str | None = None
    """Image of head and workers; defaults to the trial image."""
    head: HeadGroup = Field(default_factory=HeadGroup)
    """The head pod."""
    worker_groups: list[WorkerGroup] = Field(default_factory=list)
    """Worker groups; trials run on these (and on the head when there are none)."""
    enable_autoscaling: bool = False
    """Let KubeRay's in-tree autoscaler add and remove workers between minReplicas and maxReplicas."""
    service_account_name: str | None = None
    """Service account of the Ray pods."""

    @field_validator("worker_groups")
    @classmethod
    def _unique_names(cls, groups: list[WorkerGroup]) -> list[WorkerGroup]:
        names = [g.name for g in groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"worker group names must be unique; repeated: {', '.join(dupes)}")
        return groups


class Cleanup(Model):
    """What happens to the Ray cluster at the end."""

    delete_ray_cluster_on_finish: bool = True
    """Delete the RayCluster when the experiment succeeds or fails (storage is always kept)."""


class PodOverlay(Model):
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


class PodOverlays(Model):
    """Per-role pod overlays (cluster runs; ignored by `kubetune run`)."""

    driver: PodOverlay = Field(default_factory=PodOverlay)
    """The driver Job's pod."""
    head: PodOverlay = Field(default_factory=PodOverlay)
    """The Ray head pod."""
    worker: PodOverlay = Field(default_factory=PodOverlay)
    """Every Ray worker pod."""


class TuneExperimentSpec(Model):
    """A hyperparameter search: what to train, over which space, how to search and where to store."""

    trainable: Trainable
    """The training function."""
    objective: Objective
    """The metric to optimise."""
    parameters: dict[str, Parameter] = Field(default_factory=dict)
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


class TuneExperiment(Model):
    """A whole TuneExperiment document."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TuneExperiment"]
    metadata: ObjectMeta
    spec: TuneExperimentSpec
    status: dict[str, Any] | None = None
