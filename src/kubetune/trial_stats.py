"""What a trial measures about itself for the driver's metrics: samples, GPU memory and use, checkpoint cost.

`trial.report` adds these under the `_kubetune` key of the result it hands to Ray (only when there is
something to say), so they ride on the result stream Tune already has; the driver's
`TrialObserver` exports them as `kubetune_trial_*` and `kubetune_checkpoint_*` metrics.
Nothing here imports torch: GPU figures are read only when the trainable has loaded torch and
initialised CUDA.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RESULT_KEY = "_kubetune"


class TrialStats:
    """Figures of one trial between two reports."""

    def __init__(self) -> None:
        self.samples: int | None = None  # this iteration's training samples
        self.checkpoint: tuple[float, int] | None = None  # this report's checkpoint: (save seconds, bytes)
        self.pending_upload_s: float | None = None  # the previous checkpoint's persist time

    def collect(self) -> dict[str, Any]:
        """What to add to the result being reported (and forget it: each figure is sent once)."""
        stats: dict[str, Any] = {}
        if self.samples is not None:
            stats["samples"] = int(self.samples)
        if self.checkpoint is not None:
            stats["checkpoint_save_s"], stats["checkpoint_bytes"] = self.checkpoint
        self.samples = self.checkpoint = None
        if self.pending_upload_s is not None:
            # A report's checkpoint is persisted inside the report call, so its time rides on the next result.
            stats["checkpoint_upload_s"] = self.pending_upload_s
            self.pending_upload_s = None
        stats.update(gpu_figures())
        return stats


def gpu_figures() -> dict[str, float]:
    """Peak GPU memory since the last call and the GPU's utilisation, when this process uses CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    figures: dict[str, float] = {}
    try:
        figures["gpu_memory_bytes"] = float(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    except RuntimeError:
        return {}
    try:  # needs NVML (nvidia-ml-py); absent on some images
        figures["gpu_utilization"] = float(torch.cuda.utilization()) / 100.0
    except Exception:
        pass
    return figures


def directory_bytes(path: str | os.PathLike) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total
