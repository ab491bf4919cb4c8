"""The training loop the seed trainables share (mnist, cifar, resnet and the DDP workers).

A seed describes *what* to train in a `Recipe` (model, optimiser, data, what to report) and
hands it to `fit`, which does the rest the kubetune way:

* resume from `trial.load_state()` (a retry, a PBT exploit, a restored experiment) and continue
  with the next epoch, keeping the *current* config's optimiser hyperparameters (PBT may have
  changed `lr` while the checkpoint holds the donor's);
* one `trial.report` per epoch, with the state as a callable so that it is only serialised on the
  epochs the experiment's `checkpoint.frequency` / `atEnd` ask for;
* GPU when there is one, optional mixed precision (`amp: true`) and deterministic algorithms
  (`deterministic: true`), and reproducible shuffling from the trial's seed;
* the same loop inside Ray Train workers (`distributed=True`): DistributedSampler shards, metrics
  averaged over all workers, rank 0 writes the checkpoint.

Config keys understood by every seed built on this module:

    dataset      mnist | fashion_mnist | cifar10 | digits | synthetic (see data.py)
    smoke        true: a few dozen samples (`kubetune run --smoke`)
    epochs       iterations to run (default: the experiment's maxIterations/maxT, else the seed's)
    amp          true: mixed precision (bfloat16 autocast on CPU, float16 + GradScaler on CUDA)
    deterministic  true: torch.use_deterministic_algorithms(True)
    num_threads  torch CPU threads (default: the CPUs Ray gave the trial or worker)
    data_seed    seed of the data split/generation (default 0, the same for every trial)
    fail_at      raise an error at this iteration unless resumed: to try out failure.maxRetries

Bringing your own model? Copy a seed (e.g. `cifar.py`) and change `build`; or don't use this
module at all: all a trainable needs is `trial.load_state()` and `trial.report(...)`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kubetune import trial

# Hyperparameters of an optimiser's param groups that come from the config, not from a checkpoint.
CONFIG_HYPERPARAMETERS = ("lr", "momentum", "weight_decay", "betas", "eps")


@dataclass
class Recipe:
    """What to train: everything `fit` needs from a seed."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    val_set: Dataset
    epochs: int
    batch_size: int = 64
    # Reported metric name -> one of "loss", "accuracy" (validation) or "train_loss".
    report_as: dict[str, str] = field(default_factory=lambda: {"loss": "loss", "accuracy": "accuracy"})
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    # Limits per epoch, e.g. the Ray MNIST tutorial's 512 training / 256 test samples.
    max_train_samples: int | None = None
    max_val_samples: int | None = None


# ---------------------------------------------------------------- set-up helpers


def setup(config: dict[str, Any]) -> torch.device:
    """Per-trial set-up: CPU threads, seeds, determinism; returns the device to train on."""
    threads = config.get("num_threads") or _ray_cpu_share()
    if threads:
        # One thread per CPU the trial was given: trials sharing a node don't fight over cores.
        torch.set_num_threads(max(1, int(threads)))
    trial.seed_everything()
    if config.get("deterministic", False):
        # cuBLAS needs this to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return device()


def device() -> torch.device:
    """cuda when this process has a GPU (Ray sets CUDA_VISIBLE_DEVICES per trial), else cpu."""
    if torch.cuda.is_available():
        # In a Ray Train worker, ray.train.torch picks this worker's GPU.
        with contextlib.suppress(Exception):
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda")
    return torch.device("cpu")


def epochs(config: dict[str, Any], default: int) -> int:
    """Number of epochs (= reported iterations): config `epochs`, else the experiment's max."""
    return int(config.get("epochs") or trial.context().max_iterations or default)


def data_options(config: dict[str, Any], default_dataset: str) -> dict[str, Any]:
    """The `dataset`, `smoke` and data-seed settings every seed understands."""
    return {
        "dataset": config.get("dataset", default_dataset),
        "smoke": bool(config.get("smoke", False)),
        "seed": int(config.get("data_seed", 0)),
    }


def _ray_cpu_share() -> float | None:
    """CPUs Ray assigned to this process (a trial or a Train worker), or None outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:
        return None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------- the loop


def fit(
    recipe: Recipe,
    config: dict[str, Any],
    dev: torch.device,
    *,
    state: dict[str, Any] | None | type[Ellipsis] = ...,
    distributed: bool = False,
    prepare_loader: Callable[[DataLoader], DataLoader] | None = None,
) -> None:
    """Train `recipe` for its epochs, resuming from `state` (default: `trial.load_state()`).

    `distributed`: shard the data with DistributedSampler and average metrics over the workers
    (in a Ray Train worker); `prepare_loader` is applied to both data loaders (e.g.
    `ray.train.torch.prepare_data_loader`).
    """
    model, optimizer = recipe.model, recipe.optimizer
    amp = bool(config.get("amp", False))
    # GradScaler only for float16 on CUDA; bfloat16 (CPU) has float32's range and needs none.
    scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None

    if state is ...:
        state = trial.load_state()
    start = 0
    if state:
        start = restore(state, model, optimizer, scaler)

    seed = trial.context().seed or 0
    train_loader, train_sampler = _loader(recipe.train_set, recipe.batch_size, True, seed, distributed)
    val_loader, _ = _loader(recipe.val_set, max(recipe.batch_size, 256), False, seed, distributed)
    if prepare_loader is not None:
        train_loader, val_loader = prepare_loader(train_loader), prepare_loader(val_loader)

    # Fault injection to try out `failure.maxRetries`: fail at this iteration, unless resumed.
    fail_at = config.get("fail_at")
    samples = _samples_per_epoch(recipe, train_sampler)

    for epoch in range(start, recipe.epochs):
        if fail_at is not None and epoch + 1 == int(fail_at) and not state:
            raise RuntimeError(f"failing at iteration {epoch + 1} as configured (fail_at)")
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every worker
        elif isinstance(getattr(train_loader, "generator", None), torch.Generator):
            train_loader.generator.manual_seed(seed + epoch)  # reproducible across resumes too
        train_loss = train_one_epoch(model, train_loader, optimizer, dev, recipe.loss_fn,
                                     amp=amp, scaler=scaler, max_samples=recipe.max_train_samples)
        val_loss, accuracy = evaluate(model, val_loader, dev, recipe.loss_fn, amp=amp,
                                      max_samples=recipe.max_val_samples, distributed=distributed)
        values = {"loss": val_loss, "accuracy": accuracy, "train_loss": train_loss}
        metrics = {name: values[source] for name, source in recipe.report_as.items()}
        trial.report(
            metrics,
            # Evaluated only when this epoch is checkpointed.
            state=lambda: snapshot(model, optimizer, scaler, epoch),
            final=(epoch == recipe.epochs - 1),
            samples=samples,
        )


def _samples_per_epoch(recipe: Recipe, sampler) -> int:
    """Training samples of one epoch over all workers (for kubetune_trial_samples_per_second)."""
    per_worker = len(sampler) if sampler is not None else len(recipe.train_set)
    if recipe.max_train_samples:
        per_worker = min(per_worker, recipe.max_train_samples)
    return per_worker * (sampler.num_replicas if sampler is not None else 1)


def snapshot(model: nn.Module, optimizer, scaler, epoch: int) -> dict[str, Any]:
    """Everything needed to continue after `epoch`."""
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
    }


def restore(state: dict[str, Any], model: nn.Module, optimizer, scaler=None) -> int:
    """Load a `snapshot`; returns the epoch to continue with.

    The optimiser's hyperparameters (lr, momentum, ...) stay those of the current config: after a
    PBT exploit the checkpoint is the donor's, but the config is the new, perturbed one.
    """
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer"):
        current = [{k: g[k] for k in CONFIG_HYPERPARAMETERS if k in g} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, hyper in zip(optimizer.param_groups, current):
            group.update(hyper)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, distributed: bool):
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        # Each worker gets its own 1/world_size shard; `seed` makes the shuffle reproducible.
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler), sampler
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator), None


@contextlib.contextmanager
def autocast(dev: torch.device, enabled: bool) -> Iterator[None]:
    """Mixed precision: bfloat16 on CPU, float16 on CUDA."""
    if not enabled:
        yield
        return
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    with torch.autocast(device_type=dev.type, dtype=dtype):
        yield


def train_one_epoch(model, loader, optimizer, dev, loss_fn=F.cross_entropy, *,
                    amp=False, scaler=None, max_samples=None) -> float:
    """One pass over `loader` (or its first `max_samples`); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for images, labels in loader:
        if max_samples is not None and count >= max_samples:
            break
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(dev, amp):
            loss = loss_fn(model(images), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, dev, loss_fn=F.cross_entropy, *, amp=False, max_samples=None,
             distributed=False) -> tuple[float, float]:
    """(mean loss, accuracy) on `loader`; with `distributed`, over the shards of all workers."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    seen = 0
    for images, labels in loader:
        if max_samples is not None and seen >= max_samples:
            break
        seen += len(labels)
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        with autocast(dev, amp):
            outputs = model(images)
        sums[0] += loss_fn(outputs.float(), labels, reduction="sum").item()
        sums[1] += (outputs.argmax(dim=1) == labels).sum().item()
        sums[2] += len(labels)
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    loss, correct, count = sums.tolist()
    if count == 0:
        return math.nan, math.nan
    return loss / count, correct / count
