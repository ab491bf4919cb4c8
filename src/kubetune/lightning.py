"""PyTorch Lightning support: report and checkpoint a `lightning.Trainer` through `kubetune.trial`.

Use it with any LightningModule::

    import lightning as L
    from kubetune import lightning as kl

    def train(config):
        model = MyModule(config)
        trainer = L.Trainer(
            max_epochs=config.get("epochs", 10),
            enable_checkpointing=False,          # kubetune checkpoints (checkpoint.frequency)
            enable_progress_bar=False,
            callbacks=[kl.ReportCheckpointCallback({"loss": "ptl/val_loss", "mean_accuracy": "ptl/val_accuracy"})],
        )
        with tempfile.TemporaryDirectory() as tmp:
            # A retry, a PBT exploit or a restored experiment resumes from its checkpoint (else None);
            # the optimizer's lr is set to this trial's config (PBT may have changed it).
            ckpt_path = kl.resume_checkpoint_path(tmp, optimizer_overrides={"lr": config["lr"]})
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)

The callback reports once per validation run (or per training epoch, `on="train_epoch_end"`) and,
on the iterations the experiment's `checkpoint` section asks for, saves the complete Lightning
checkpoint (model, optimizers, loops, callbacks) as the trial's state.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Mapping

import lightning.pytorch as pl
import torch

from kubetune import trial

STATE_KEY = "lightning_checkpoint"
HOOKS = ("validation_end", "train_epoch_end", "train_end")


class ReportCheckpointCallback(pl.Callback):
    """Report Lightning's logged metrics to kubetune (and so to Ray Tune) and checkpoint.

    Args:
        metrics: reported name -> name logged with `self.log` (e.g. {"loss": "ptl/val_loss"}); a
            list of logged names reports them under their own names; None reports everything
            in `trainer.callback_metrics`.
        on: when to report: "validation_end" (default), "train_epoch_end" or "train_end", or a list.
    """

    def __init__(
        self,
        metrics: Mapping[str, str] | Iterable[str] | str | None = None,
        on: str | Iterable[str] = "validation_end",
    ):
        if isinstance(metrics, str):
            metrics = [metrics]
        if metrics is not None and not isinstance(metrics, Mapping):
            metrics = {name: name for name in metrics}
        self._metrics = dict(metrics) if metrics is not None else None
        hooks = [on] if isinstance(on, str) else list(on)
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise ValueError(f"unknown hook(s) {', '.join(unknown)}; valid: {', '.join(HOOKS)}")
        self._hooks = set(hooks)

    # -- Lightning hooks

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "validation_end" in self._hooks and not trainer.sanity_checking:
            self._report(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train_epoch_end" in self._hooks:
            self._report(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "train_end" in self._hooks:
            self._report(trainer, final=True)

    # -- reporting

    def _collect(self, trainer: pl.Trainer) -> dict[str, Any]:
        logged = trainer.callback_metrics
        if self._metrics is None:
            return {name: _plain(value) for name, value in logged.items()}
        missing = [source for source in self._metrics.values() if source not in logged]
        if missing:
            raise KeyError(
                f"ReportCheckpointCallback: metric(s) {', '.join(missing)} were not logged; "
                f"logged metrics are: {', '.join(sorted(logged)) or 'none'}"
            )
        return {name: _plain(logged[source]) for name, source in self._metrics.items()}

    def _report(self, trainer: pl.Trainer, final: bool = False) -> None:
        if trainer.state.fn != "fit":
            return  # a trainer.validate() run outside fitting is not an iteration
        metrics = self._collect(trainer)
        metrics.setdefault("epoch", trainer.current_epoch)
        final = final or (trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs)
        state = None
        if trial.should_checkpoint(trial.iteration() + 1, final=final):
            # Every rank calls save_checkpoint (it is collective under distributed strategies);
            # `trial.report` keeps the state of the checkpoint writer (rank 0) only.
            state = {STATE_KEY: _dump(trainer)}
        trial.report(metrics, state=state, final=final)


def _dump(trainer: pl.Trainer) -> dict[str, Any]:
    """The full Lightning checkpoint as a dict (what `trainer.save_checkpoint` writes)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-pl-") as tmp:
        path = os.path.join(tmp, "state.ckpt")
        trainer.save_checkpoint(path)
        if not os.path.exists(path):  # ranks other than 0 write nothing
            return {}
        return torch.load(path, map_location="cpu", weights_only=False)


def _plain(value: Any) -> Any:
    """Tensors -> Python numbers (Ray cannot report tensors)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def resume_checkpoint_path(
    directory: str | os.PathLike,
    optimizer_overrides: Mapping[str, Any] | None = None,
) -> str | None:
    """The trial's checkpoint to resume from, as a .ckpt file in `directory`, or None.

    Pass the result to `trainer.fit(..., ckpt_path=...)`: Lightning then restores the model, the
    optimizers and the epoch counter. `optimizer_overrides` (e.g. {"lr": config["lr"]}) are set on
    every optimizer param group of the checkpoint: after a PBT exploit the checkpoint is the
    donor's but the hyperparameters are this trial's new ones.
    """
    state = trial.load_state()
    if not state or not state.get(STATE_KEY):
        return None
    checkpoint = state[STATE_KEY]
    for optimizer_state in checkpoint.get("optimizer_states", []):
        for group in optimizer_state.get("param_groups", []):
            group.update(optimizer_overrides or {})
    path = os.path.join(os.fspath(directory), "resume.ckpt")
    torch.save(checkpoint, path)
    return path
