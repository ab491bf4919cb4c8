"""The operator's Prometheus metrics (served on KUBETUNE_METRICS_PORT by `kubetune operator`)."""

from __future__ import annotations

from prometheus_client import Counter

RECONCILES = Counter(
    "kubetune_operator_reconciles_total", "Reconciles of TuneExperiments, by trigger and result.",
    ["trigger", "result"])
PHASE_TRANSITIONS = Counter(
    "kubetune_operator_phase_transitions_total", "TuneExperiment phase changes made by the operator, by new phase.",
    ["phase"])
