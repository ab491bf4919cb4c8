"""Tune's per-trial logger files, at a bounded cost per result.

Ray Tune adds three logger callbacks (result.json, progress.csv, TensorBoard events) unless one of
each kind is given. Its TensorBoard logger flushes each trial's event file after every result: that
was the largest part of the driver's work per result (0.6 s of 1.1 s for 320 results, `bench/run.py`),
paid while the trial that reported waits for its next step. kubetune passes a TensorBoard logger that
flushes at most every FLUSH_S seconds (and when the trial ends, when its writer is closed).
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.logger import TBXLoggerCallback

FLUSH_S = 5.0


class _BoundedFlush:
    """A tensorboardX SummaryWriter whose flush() writes at most every `every_s` seconds; close() always does."""

    def __init__(self, writer: Any, every_s: float):
        self._writer, self._every_s = writer, every_s
        self._last = time.monotonic()

    def flush(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._writer.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class TensorBoardLogger(TBXLoggerCallback):
    """Tune's TBXLoggerCallback (same files, same content), flushing at most every `flush_s` seconds."""

    def __init__(self, flush_s: float = FLUSH_S):
        super().__init__()
        self.flush_s = flush_s

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)
        self._trial_writer[trial] = _BoundedFlush(self._trial_writer[trial], self.flush_s)


def tune_loggers(disabled: bool) -> list:
    """The logger callbacks kubetune passes to Tune (Tune adds its JSON and CSV loggers itself).

    None when the loggers are off (S3 storage, or TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1), or when
    tensorboardX is not installed (Tune then writes no TensorBoard files either).
    """
    if disabled:
        return []
    try:
        return [TensorBoardLogger()]
    except ImportError:
        return []
