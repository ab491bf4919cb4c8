"""The small API a trainable uses: report metrics, checkpoint, resume.

A trainable is any function `train(config: dict) -> None`::

    from kubetune import trial

    def train(config):
        model = Net(config["l1"])
        state = trial.load_state()                 # None on a fresh start
        start = 0
        if state:
            model.load_state_dict(state["model"])
            start = state["epoch"] + 1
        for epoch in range(start, config["epochs"]):
            accuracy = fit_one_epoch(model)
            trial.report({"mean_accuracy": accuracy},
                         state=lambda: {"model": model.state_dict(), "epoch": epoch})

`report` checkpoints only on the iterations the experiment's `checkpoint` section asks for
(every `frequency` iterations and at the end), so `state` is a callable: it is evaluated only then.
The same calls work in a plain Tune trial and inside the workers of a Ray Train TorchTrainer
(where rank 0 writes the checkpoint). Nothing here imports Ray or torch until it is used.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kubetune.trial_stats import RESULT_KEY, TrialStats, directory_bytes

STATE_FILE = "state.pt"
META_FILE = "kubetune.json"


@dataclass
class TrialContext:
    """What the driver tells a trial about the experiment (set before the trainable runs)."""

    checkpoint_frequency: int = 1
    checkpoint_at_end: bool = True
    max_iterations: int | None = None
    seed: int | None = None
    data_dir: str = os.environ.get("KUBETUNE_DATA_DIR", os.path.expanduser("~/.cache/kubetune/data"))
    trial_id: str = ""
    # Set when the experiment has `distributed`: {"workers", "cpus_per_worker", "gpus_per_worker", "backend"}.
    distributed: dict[str, Any] | None = None
    # The trial computes its next iteration while the driver handles the last result, except after the
    # iterations in hold_at and from hold_from on (kubetune.tune.space.result_pipelining says why).
    pipelined: bool = False
    hold_at: tuple[int, ...] = ()
    hold_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_context = TrialContext()
_iteration = 0
_stats = TrialStats()

# Added to a trial's first result: the sampled parameters its trainable had not read by then.
UNREAD_KEY = "kubetune_unread_parameters"


class ReadTrackingConfig(dict):
    """The config a trainable gets: a plain dict that notes which keys were read (and asked for but missing).

    Reading the whole config (iterating it, `dict(config)`, `**config`, sending it to other processes)
    counts as reading every key: the keys are then used somewhere this process cannot see.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()
        self.missing: set[str] = set()
        self.read_all = False

    def _note(self, key: Any) -> None:
        if key in dict.keys(self):
            self.read.add(key)
        elif isinstance(key, str):
            self.missing.add(key)

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self._note(key)
        return super().__contains__(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().setdefault(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
        return super().pop(key, *default)

    def _all(self) -> None:
        self.read_all = True

    def keys(self):  # also what dict(config) and **config use for a dict subclass
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def __iter__(self):
        self._all()
        return super().__iter__()

    def copy(self) -> dict:
        self._all()
        return dict(super().items())

    def __reduce__(self):  # pickled for another process (a TorchTrainer's workers): read there
        self._all()
        return (dict, (dict(super().items()),))

    def unread(self, names: Iterable[str]) -> list[str]:
        if self.read_all:
            return []
        return [n for n in names if n in dict.keys(self) and n not in self.read]


_watched: tuple[ReadTrackingConfig, list[str]] | None = None


def watch_config(config: ReadTrackingConfig | None, parameters: Iterable[str] = ()) -> None:
    """Report, with the first result, which of `parameters` the trainable has not read from `config`."""
    global _watched
    _watched = (config, list(parameters)) if config is not None else None


def context() -> TrialContext:
    """The current trial's context (defaults when run outside kubetune)."""
    return _context


def bind(ctx: TrialContext | Mapping[str, Any], iteration: int = 0) -> None:
    """Install a context, e.g. in each TorchTrainer worker from the trial's `context().to_dict()`."""
    global _context, _iteration, _stats
    _context = ctx if isinstance(ctx, TrialContext) else TrialContext(**ctx)
    _iteration = iteration
    _stats = TrialStats()


def iteration() -> int:
    """Iterations reported so far by this trial, counting those before a restore."""
    return _iteration


def data_dir(name: str = "") -> Path:
    """Where datasets are downloaded to (KUBETUNE_DATA_DIR), shared by the trials of a node."""
    path = Path(_context.data_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int | None = None) -> int | None:
    """Seed python, numpy and torch (if loaded) with `seed` or the trial's seed."""
    seed = _context.seed if seed is None else seed
    if seed is None:
        return None
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    return seed


def should_checkpoint(iteration: int | None = None, final: bool = False) -> bool:
    """Whether the experiment wants a checkpoint at this (1-based) iteration."""
    it = _iteration if iteration is None else iteration
    freq = _context.checkpoint_frequency
    if freq and it % freq == 0:
        return True
    at_last = final or (_context.max_iterations is not None and it >= _context.max_iterations)
    return _context.checkpoint_at_end and at_last


def report(
    metrics: Mapping[str, Any],
    state: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    *,
    final: bool = False,
    samples: int | None = None,
) -> None:
    """Report one iteration's metrics; checkpoint `state` when the experiment asks for it.

    Pass `final=True` on the last iteration so that `checkpoint.atEnd` is honoured even when the
    trainable decides its own number of iterations, and `samples` (training samples of this
    iteration) for the kubetune_trial_samples_per_second metric.
    """
    global _iteration, _watched
    _iteration += 1
    metrics = dict(metrics)
    _stats.samples = samples
    if _watched is not None:  # once, with the first result of this process
        config, names = _watched
        _watched = None
        unread = config.unread(names)
        if unread:
            metrics[UNREAD_KEY] = {"unread": unread, "missing": sorted(config.missing)}
    if state is None or not should_checkpoint(final=final):
        _ray_report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="kubetune-ckpt-") as tmp:
        if _is_checkpoint_writer():
            start = time.perf_counter()
            save_state(tmp, state() if callable(state) else state)
            saved = time.perf_counter()
            _stats.checkpoint = (saved - start, directory_bytes(tmp))
            _ray_report(metrics, tmp)
            _stats.pending_upload_s = time.perf_counter() - saved
        else:
            _ray_report(metrics, None)


def load_state() -> dict[str, Any] | None:
    """The state of the checkpoint this trial resumes from (retry, PBT exploit, restore), or None."""
    global _iteration
    checkpoint = _ray_get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        state, meta = read_state(directory)
    _iteration = int(meta.get("iteration", _iteration))
    return state


def save_state(directory: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write `state` (torch.save when torch is loaded, else pickle) and our metadata to a directory."""
    directory = Path(directory)
    fmt = "torch" if "torch" in sys.modules else "pickle"
    if fmt == "torch":
        sys.modules["torch"].save(dict(state), directory / STATE_FILE)
    else:
        with open(directory / STATE_FILE, "wb") as fh:
            pickle.dump(dict(state), fh)
    (directory / META_FILE).write_text(json.dumps({"iteration": _iteration, "format": fmt}))


def read_state(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read back what `save_state` wrote: (state, metadata)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    path = directory / STATE_FILE
    if meta.get("format", "torch") == "torch":
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
    else:
        with open(path, "rb") as fh:
            state = pickle.load(fh)
    return state, meta


def copy_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a checkpoint directory (used when loading the best model afterwards)."""
    shutil.copytree(source, target, dirs_exist_ok=True)


# ---------------------------------------------------------------- Ray plumbing


def _in_tune_function() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session
    except ImportError:
        return False
    return _in_tune_session()


def _in_train_worker() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:
        return False


def _is_checkpoint_writer() -> bool:
    if _in_tune_function():
        return True
    if _in_train_worker():
        import ray.train

        return ray.train.get_context().get_world_rank() == 0
    return True


def _ray_report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    stats = _stats.collect()
    if stats and RESULT_KEY not in metrics:  # only when there is something to say
        metrics = {**metrics, RESULT_KEY: stats}
    if _in_tune_function():
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)
    elif _in_train_worker():
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
    else:
        # Outside Ray (a unit test, a notebook): print, so the function is still runnable.
        print(f"[kubetune.trial] iteration {_iteration}: {metrics}" + (" (checkpoint)" if checkpoint_dir else ""))


def _ray_get_checkpoint():
    if _in_tune_function():
        from ray import tune

        return tune.get_checkpoint()
    if _in_train_worker():
        import ray.train

        return ray.train.get_checkpoint()
    return None
