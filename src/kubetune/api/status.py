"""The TuneExperiment status: phases, conditions with documented reasons, trial counts, best trial.

The operator owns phase and conditions; the driver writes `trials`, `bestTrial` and `progress`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kubetune.api.spec import Model


class Phase:
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    ALL = (PENDING, PROVISIONING, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
    FINISHED = (SUCCEEDED, FAILED)


class ConditionType:
    SPEC_VALID = "SpecValid"
    STORAGE_READY = "StorageReady"
    RAY_CLUSTER_READY = "RayClusterReady"
    DRIVER_RUNNING = "DriverRunning"
    COMPLETE = "Complete"


class Reason:
    """Reasons used in conditions and events (CamelCase, as Kubernetes does)."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_FOUND = "SecretFound"
    NO_SECRET_REF = "NoSecretRef"
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    WAITING_FOR_PREVIOUS_DRIVER = "WaitingForPreviousDriver"
    LOCAL_STORAGE = "LocalStorage"
    RAY_CLUSTER_CREATING = "RayClusterCreating"
    RAY_CLUSTER_READY = "RayClusterReady"
    RAY_CLUSTER_FAILED = "RayClusterFailed"
    RAY_CLUSTER_DELETED = "RayClusterDeleted"
    DRIVER_STARTING = "DriverStarting"
    DRIVER_RUNNING = "DriverRunning"
    DRIVER_SUCCEEDED = "DriverSucceeded"
    DRIVER_FAILED = "DriverFailed"
    GOAL_REACHED = "GoalReached"
    BUDGET_EXHAUSTED = "TrialBudgetExhausted"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    # The operator's refusals and what it reads off children it cannot make run (issue #6).
    INVALID_NAME = "InvalidName"  # metadata.name longer than the children's names allow
    NOT_ALLOWED = "NotAllowed"  # a service account or image the operator's settings do not allow
    INFEASIBLE = "Infeasible"  # trials that no worker group can ever hold
    SECRET_REFERENCED = "SecretReferenced"  # the pods read storage.secretRef (the operator cannot read Secrets)
    CREATE_REFUSED = "CreateRefused"  # the API server refused a child (422, 403, quota)
    POD_CREATE_FAILED = "PodCreateFailed"  # the Job controller cannot create the driver pod (Pod Security, quota)
    PODS_NOT_STARTING = "PodsNotStarting"  # pods wait on a missing Secret, an image, a node that fits
    SPEC_REJECTED_BY_DRIVER = "SpecRejectedByDriver"  # driver exit code 2
    ALL_TRIALS_FAILED = "AllTrialsFailed"  # driver exit code 3


class Condition(Model):
    """A status condition in the Kubernetes convention."""

    type: str
    """SpecValid, StorageReady, RayClusterReady, DriverRunning or Complete."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """A CamelCase reason, e.g. InvalidSpec, RayClusterReady, DriverFailed."""
    message: str = ""
    """Human-readable details."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was set for."""


class TrialCounts(Model):
    """Trials by state."""

    total: int = 0
    """The trial budget (numSamples times the grid size), or more trials if the search made more."""
    pending: int = 0
    """Not started yet, waiting for a retry, or paused (PBT)."""
    running: int = 0
    """Running now."""
    terminated: int = 0
    """Finished: ran to their last iteration, returned, or reached the goal."""
    stopped: int = 0
    """Ended early: by the scheduler (ASHA, HyperBand, median stopping), another trial reaching the goal, or the time budget."""
    error: int = 0
    """Failed past their retries."""
    interrupted: int = 0
    """Were running when the driver was interrupted (SIGINT/SIGTERM); they resume when the driver starts again."""


class BestTrial(Model):
    """The best trial so far by the objective."""

    id: str
    """Trial id."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Its sampled parameters."""
    metric: float | None = None
    """Its objective metric."""
    iteration: int | None = None
    """Iterations it reported."""
    checkpoint: str | None = None
    """URI of its latest checkpoint."""


class TuneExperimentStatus(Model):
    """Observed state of a TuneExperiment."""

    phase: Literal["Pending", "Provisioning", "Running", "Succeeded", "Failed", "Suspended"] | None = None
    """Pending, Provisioning (Ray cluster not ready), Running, Succeeded, Failed or Suspended."""
    message: str | None = None
    """Why the experiment is in this phase."""
    conditions: list[Condition] = Field(default_factory=list)
    """SpecValid, StorageReady, RayClusterReady, DriverRunning, Complete."""
    trials: TrialCounts | None = None
    """Trials by state (written by the driver)."""
    progress: str | None = None
    """Trials done of total, e.g. 12/20 (written by the driver)."""
    best_trial: BestTrial | None = None
    """The best trial so far (written by the driver)."""
    ray_cluster_name: str | None = None
    """Name of the RayCluster."""
    driver_job_name: str | None = None
    """Name of the driver Job."""
    results_uri: str | None = None
    """Where the results file is."""
    start_time: str | None = None
    """When the experiment started."""
    completion_time: str | None = None
    """When it finished."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
