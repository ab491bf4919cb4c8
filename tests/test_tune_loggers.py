"""Tune's per-trial logger files at a bounded cost: the TensorBoard logger kubetune passes to Tune."""

import os

import pytest

pytest.importorskip("tensorboardX")
pytestmark = pytest.mark.ray  # imports ray.tune (starts no Ray)


class StandInTrial:
    """What Tune's TensorBoard logger reads of a Trial: its directory and its parameters."""

    def __init__(self, path):
        self.local_path, self.evaluated_params, self.trial_id = str(path), {"x": 0.5}, "t1"

    def init_local_path(self):
        os.makedirs(self.local_path, exist_ok=True)


def log_ten_results(logger, path):
    """Ten results through `logger`; the number of times the trial's event file was flushed meanwhile."""
    trial = StandInTrial(path)
    logger.log_trial_start(trial)
    writer = logger._trial_writer[trial]
    writer = getattr(writer, "_writer", writer)
    flushes, real_flush = [], writer.flush
    writer.flush = lambda: (flushes.append(1), real_flush())[1]
    for i in range(1, 11):
        logger.log_trial_result(i, trial, {"training_iteration": i, "score": i / 10})
    count = len(flushes)
    logger.log_trial_end(trial)
    return count


def test_tensorboard_events_are_flushed_at_a_bounded_rate_and_none_is_lost(tmp_path):
    from ray.tune.logger import TBXLoggerCallback
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from kubetune.tune.tune_loggers import TensorBoardLogger

    assert log_ten_results(TBXLoggerCallback(), tmp_path / "tune") == 10  # Tune's own: after every result
    assert log_ten_results(TensorBoardLogger(flush_s=3600), tmp_path / "kubetune") == 0
    # the same content: every step is in the event file once the trial ends (its writer closed)
    for name in ("tune", "kubetune"):
        events = [e for f in (tmp_path / name).glob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load()]
        steps = sorted(e.step for e in events if any(v.tag == "ray/tune/score" for v in e.summary.value))
        assert steps == list(range(1, 11)), name


def test_the_driver_passes_it_only_when_tune_writes_logger_files():
    from kubetune.tune.tune_loggers import TensorBoardLogger, tune_loggers

    assert [type(c) for c in tune_loggers(disabled=False)] == [TensorBoardLogger]
    assert tune_loggers(disabled=True) == []
