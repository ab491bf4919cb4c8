"""The `api` layer: the TuneExperiment spec and status models, and how to load them."""

from kubetune.api.errors import FieldIssue, SpecError
from kubetune.api.load import load_experiment, load_experiment_file, apply_overrides
from kubetune.api.spec import TuneExperiment, TuneExperimentSpec

__all__ = [
    "FieldIssue", "SpecError", "TuneExperiment", "TuneExperimentSpec",
    "load_experiment", "load_experiment_file", "apply_overrides",
]
