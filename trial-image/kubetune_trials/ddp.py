"""Distributed data-parallel training per trial: a Ray Train `TorchTrainer` inside a Tune trial.

With `distributed` in the experiment, each trial is a small driver that starts a TorchTrainer of
`workers` processes (DDP, gloo on CPU or nccl on GPU) and relays what they report to Ray Tune:

    Tune trial (this module's `train`, ~0 CPU)
      └─ Ray Train controller ── worker 0 ── worker 1 ...   (each: cpus/gpus per worker)

The per-worker loop (`train_loop_per_worker`) is ordinary DDP code with Ray Train's helpers:
`ray.train.torch.prepare_model` (moves the model to the worker's device and wraps it in
DistributedDataParallel), a DistributedSampler per data loader (each worker trains on its own
shard) and `ray.train.torch.prepare_data_loader`; metrics are averaged over the workers and rank 0
writes the checkpoint through `trial.report` every `checkpoint.frequency` iterations.
Options: `amp: true` (autocast: bfloat16 on CPU, float16 + GradScaler on CUDA) and
`deterministic: true` (`torch.use_deterministic_algorithms`); workers are seeded from the trial.

How checkpoints and resuming work (Ray 2.60, Train V2 inside Tune)
------------------------------------------------------------------
Ray's own `ray.tune.integration.ray_train.TuneReportCallback` relays only *metrics* (the path of
a Train checkpoint becomes a `checkpoint_path` metric): Tune never registers a checkpoint, so
results have no `.checkpoint`, `checkpoint.numToKeep` does nothing, PBT has nothing to copy and a
retried trial gets nothing from `tune.get_checkpoint()`. Ray's answer to retries is Train's own
restore: a TorchTrainer started again with the same `RunConfig(name, storage_path)` finds its
checkpoint-manager snapshot in storage and gives the workers the latest checkpoint through
`ray.train.get_checkpoint()`.

kubetune wants Tune to own the checkpoints (PBT, best-checkpoint results, numToKeep, restore), so
`run` relays each report itself, with its checkpoint, in the same way TuneReportCallback does:

1. A Train `UserCallback` (`ForwardToTune`, in the Train controller) hands every consolidated
   report (rank 0's metrics + the checkpoint Train persisted) to the Tune trial through a Ray
   queue, then waits for an acknowledgement.
2. The Tune trial runs `trainer.fit()` in a thread and, in its own thread, calls
   `ray.tune.report(metrics, checkpoint=...)`: Tune copies the checkpoint into the trial's
   directory and registers it. Train keeps just its latest checkpoint (`num_to_keep=1`); the
   acknowledgement makes sure Train deletes a checkpoint only after Tune has copied it.
3. Resuming: `ray.tune.get_checkpoint()` (a retry, a PBT exploit, a restored experiment) is
   passed to the workers, which resume from it. The Train run is named after the trial *and* that
   checkpoint (`train-<trial id>[-from-<hash of the checkpoint path>]`, stored in the trial's
   directory), so a driver restarted from the same Tune checkpoint also picks up Train's own
   newer checkpoints of that run (`ray.train.get_checkpoint()`, preferred by the workers), while
   a PBT exploit (a different checkpoint) starts a new Train run from the donor's state.
4. When Tune stops the trial (ASHA, PBT, maxIterations) the relay thread gets SystemExit from
   `tune.report`. It removes the workers' placement group (worker 0 sent its id at start), which
   frees their resources at once, then releases the controller and aborts the Train run (as
   Ctrl-C would). The `trainer.fit()` thread is not a daemon, so a trial process that Tune ends
   gracefully lives until this is done. (Ray's own clean-up of the placement group of a dead
   controller polls the State API, which needs the dashboard; without it, a stopped trial's
   workers would keep their CPUs until the driver exits.)

Outside Tune (a plain script) `train` just runs the TorchTrainer.

Config keys: `lr` (0.01), `momentum` (0.9), `batch_size` (64 per worker), `hidden` (128),
`epochs` (5), `dataset` (mnist; or fashion_mnist, cifar10, digits, synthetic: images are made
1x28x28), `worker_max_failures` (0: Ray Train restarts of failed workers within a trial, on top
of the experiment's trial retries), and the shared keys of `common.py` (`smoke`, `amp`,
`deterministic`, `fail_at`, ...).
The workers come from the experiment's `distributed` (`trial.context().distributed`: workers,
cpus_per_worker, gpus_per_worker, backend), by default 2 CPU workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn, optim

from kubetune import trial
from kubetune_trials import common, data

DEFAULT_DISTRIBUTED = {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "backend": "auto"}

Build = Callable[[dict, torch.device], common.Recipe]


# ---------------------------------------------------------------- the model


class SmallConvNet(nn.Module):
    """Two convolutions and two linear layers for 1x28x28 images."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 16 x 14 x 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 32 x 7 x 7
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def build(config: dict[str, Any], dev: torch.device) -> common.Recipe:
    opts = common.data_options(config, default_dataset="mnist")
    model = SmallConvNet(int(config.get("hidden", 128))).to(dev)
    optimizer = optim.SGD(model.parameters(), lr=config.get("lr", 0.01), momentum=config.get("momentum", 0.9))
    return common.Recipe(
        model=model,
        optimizer=optimizer,
        train_set=data.load(split="train", image_size=28, channels=1, **opts),
        val_set=data.load(split="test", image_size=28, channels=1, **opts),
        epochs=common.epochs(config, default=5),
        batch_size=int(config.get("batch_size", 64)),
        report_as={"loss": "loss", "accuracy": "accuracy", "train_loss": "train_loss"},
    )


def train(config: dict[str, Any]) -> None:
    """The trainable: this seed's model on a TorchTrainer."""
    run(config, build)


# ---------------------------------------------------------------- in each Ray Train worker


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What every worker runs: the shared training loop, data-parallel."""
    import ray
    import ray.train.torch

    config, build_fn = loop_config["config"], loop_config["build"]
    # The trial's context (checkpoint frequency, seed, ...) travels with the config: bind it here so
    # that trial.report checkpoints on the same iterations as a single-process trial.
    trial.bind(loop_config["context"])
    dev = common.setup(config)  # same seed on every worker: identical initial weights

    # Resume: Train's own checkpoint of this run if it has one (a restarted worker group, or the
    # trial driver restarted from the same Tune checkpoint), else the Tune checkpoint handed over.
    state = trial.load_state()
    if state is None and loop_config.get("resume_from") is not None:
        with loop_config["resume_from"].as_directory() as directory:
            state, meta = trial.read_state(directory)
        trial.bind(loop_config["context"], iteration=int(meta.get("iteration", 0)))

    inbox = loop_config.get("inbox")
    if inbox is not None and ray.train.get_context().get_world_rank() == 0:
        # Tell the Tune trial where the workers run, so that it can free them if it is stopped.
        inbox.put(("placement_group", ray.get_runtime_context().get_placement_group_id()))

    recipe = build_fn(config, dev)
    recipe.model = ray.train.torch.prepare_model(recipe.model)  # to the device, in DDP when >1 worker
    common.fit(
        recipe,
        config,
        dev,
        state=state,
        distributed=True,
        prepare_loader=ray.train.torch.prepare_data_loader,  # keeps our DistributedSampler
    )


# ---------------------------------------------------------------- in the Tune trial (the driver)


def run(config: dict[str, Any], build_fn: Build) -> None:
    """Train `build_fn`'s recipe on a TorchTrainer sized by the experiment's `distributed`."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    ctx = trial.context()
    dist = {**DEFAULT_DISTRIBUTED, **{k: v for k, v in (ctx.distributed or {}).items() if v is not None}}
    gpus = float(dist["gpus_per_worker"] or 0)
    backend = dist["backend"] if dist["backend"] != "auto" else ("nccl" if gpus > 0 else "gloo")
    resources = {"CPU": float(dist["cpus_per_worker"])}
    if gpus > 0:
        resources["GPU"] = gpus

    # Ray Train's controller collects worker reports on each health check (default every 2 s);
    # poll more often so that short iterations are not stretched to 2 s.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

    in_tune = trial._in_tune_function()
    resume_from = _tune_checkpoint() if in_tune else None
    inbox = acks = None
    if in_tune:
        from ray.util.queue import Queue

        # Controller/worker 0 -> this trial: reports and the workers' placement group; and back.
        inbox = Queue(maxsize=1, actor_options={"num_cpus": 0})
        acks = Queue(maxsize=1, actor_options={"num_cpus": 0})

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config,
            "build": build_fn,
            "context": ctx.to_dict(),
            "resume_from": resume_from,
            "inbox": inbox,
        },
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(dist["workers"]),
            use_gpu=gpus > 0,
            resources_per_worker=resources,
        ),
        run_config=_train_run_config(config, resume_from, inbox, acks),
    )
    if not in_tune:
        trainer.fit()
        return
    try:
        _relay(trainer, inbox, acks)
    finally:
        for queue in (inbox, acks):
            with contextlib.suppress(Exception):
                queue.shutdown(force=True)


def _tune_checkpoint():
    import ray.tune

    return ray.tune.get_checkpoint()


def _train_run_config(config: dict[str, Any], resume_from, inbox, acks):
    """The Train run: in Tune, stored in the trial's directory and named after the trial and its
    resume point, with Tune keeping the checkpoints."""
    import ray.train
    import ray.tune

    kwargs: dict[str, Any] = {}
    if inbox is not None:  # in Tune
        from ray.train._internal.session import get_session

        storage = get_session().storage
        name = f"train-{ray.tune.get_context().get_trial_id()}"
        if resume_from is not None:
            name += "-from-" + hashlib.sha1(resume_from.path.encode()).hexdigest()[:10]
        kwargs = {
            "name": name,
            "storage_path": storage.trial_fs_path,
            "storage_filesystem": storage.storage_filesystem,
            # Tune keeps its own copy of every checkpoint; Train needs only its latest (to restart).
            "checkpoint_config": ray.train.CheckpointConfig(num_to_keep=1),
            "callbacks": [ForwardToTune(inbox, acks)],
        }
    return ray.train.RunConfig(
        failure_config=ray.train.FailureConfig(max_failures=int(config.get("worker_max_failures", 0))),
        **kwargs,
    )


def _relay(trainer, inbox, acks) -> None:
    """Run `trainer.fit()` in a thread; report what it reports to Tune, checkpoints included."""
    import ray
    import ray.tune
    from ray.util.queue import Empty

    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial's thread below
            outcome["error"] = exc

    # Not a daemon thread: when Tune ends the trial's process gracefully, Python waits for this
    # thread, which gives the `finally` below the time to end the Train run first.
    thread = threading.Thread(target=fit, name="kubetune-torchtrainer", daemon=False)
    thread.start()
    controller = placement_group = None
    try:
        while True:
            try:
                kind, *item = inbox.get(timeout=0.5)
            except Empty:
                if thread.is_alive():
                    continue
                break  # fit() returned: the controller waits for each ack, so nothing is left
            if kind == "placement_group":
                placement_group = item[0]
                continue
            metrics, checkpoint, controller = item
            if checkpoint is not None:
                checkpoint = ray.tune.Checkpoint(path=checkpoint.path, filesystem=checkpoint.filesystem)
            # Tune copies the checkpoint into the trial's directory and registers it. Raises
            # SystemExit when Tune stops the trial (scheduler, stop criteria).
            ray.tune.report(metrics, checkpoint=checkpoint)
            acks.put(True)
    finally:
        if thread.is_alive():
            _end_train_run(placement_group, controller, acks)
        thread.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]


def _end_train_run(placement_group_id: str | None, controller, acks) -> None:
    """Tune stopped the trial (or relaying failed): make sure the Train run does not outlive it.

    The workers' placement group is removed first: that frees their resources at once, even if
    the trial's process is killed a moment later (Ray's own clean-up of a dead controller's
    placement group needs the State API, i.e. the dashboard). Then the controller is released
    from waiting for an acknowledgement and aborted, as Ctrl-C would.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if placement_group_id:
        with contextlib.suppress(Exception):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(placement_group_id))))
    with contextlib.suppress(Exception):
        acks.put(False, timeout=5)
    if controller is not None:
        with contextlib.suppress(Exception):
            ray.get(controller.abort.remote(), timeout=60)


# A Train V2 callback (runs in the Train controller, a separate actor).
try:
    from ray.train.v2.api.callback import UserCallback as _UserCallback
except ImportError:  # Ray without Train V2: `run` is then unusable anyway
    _UserCallback = object


class ForwardToTune(_UserCallback):
    """Relays each consolidated Train report, with its persisted checkpoint, to the Tune trial.

    Like `ray.tune.integration.ray_train.TuneReportCallback`, but the checkpoint goes along (not
    just its path as a metric), and the controller waits until Tune has copied it.
    """

    def __init__(self, inbox, acks):
        self._inbox, self._acks = inbox, acks

    def after_report(self, run_context, metrics, checkpoint):
        import ray

        controller = ray.get_runtime_context().current_actor
        self._inbox.put(("report", dict(metrics[0]), checkpoint, controller))
        # True: Tune has the result (and its copy of the checkpoint). False: Tune stopped the
        # trial and is ending this run.
        self._acks.get()
