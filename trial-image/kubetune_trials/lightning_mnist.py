"""Ray Tune's "Using PyTorch Lightning with Tune" MNIST classifier, as a kubetune trainable.

The LightningModule is the tutorial's, unchanged: a 3-layer MLP with tunable `layer_1_size`,
`layer_2_size` and `lr` (Adam), and the data module's `batch_size`. kubetune's part is small:

* `kubetune.lightning.ReportCheckpointCallback` reports the logged validation metrics after each
  validation run (as `loss` and `mean_accuracy`) and, when the experiment's checkpoint settings
  ask for it, saves the complete Lightning checkpoint;
* `kubetune.lightning.resume_checkpoint_path` hands a restored checkpoint (a retry, or with PBT
  the donor trial's checkpoint after an exploit) to `trainer.fit(ckpt_path=...)`, so training
  continues from there with this trial's new `lr`;
* TensorBoard logs go to `lightning_logs/` in the trial's working directory.

    trainable:
      entrypoint: kubetune_trials.lightning_mnist:train
    parameters:
      layer_1_size: {choice: [32, 64, 128]}
      layer_2_size: {choice: [64, 128, 256]}
      lr: {loguniform: {min: 1.0e-4, max: 1.0e-1}}
      batch_size: {choice: [32, 64, 128]}

Config keys: `layer_1_size` (128), `layer_2_size` (256), `lr` (1e-3), `batch_size` (64), `epochs`
(10), `dataset` (mnist; or fashion_mnist, digits, synthetic), `smoke`, `num_workers` (0, data
loader processes), `log_dir` (the working directory).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, random_split
from torchmetrics import Accuracy

from kubetune import lightning as kl
from kubetune_trials import common, data


class MNISTClassifier(pl.LightningModule):
    """The tutorial's LightningModule."""

    def __init__(self, config):
        super().__init__()
        self.accuracy = Accuracy(task="multiclass", num_classes=10, top_k=1)
        self.layer_1_size = config["layer_1_size"]
        self.layer_2_size = config["layer_2_size"]
        self.lr = config["lr"]

        # mnist images are (1, 28, 28) (channels, width, height)
        self.layer_1 = torch.nn.Linear(28 * 28, self.layer_1_size)
        self.layer_2 = torch.nn.Linear(self.layer_1_size, self.layer_2_size)
        self.layer_3 = torch.nn.Linear(self.layer_2_size, 10)
        self.eval_loss = []
        self.eval_accuracy = []

    def cross_entropy_loss(self, logits, labels):
        return F.nll_loss(logits, labels)

    def forward(self, x):
        batch_size, channels, width, height = x.size()
        x = x.view(batch_size, -1)

        x = self.layer_1(x)
        x = torch.relu(x)

        x = self.layer_2(x)
        x = torch.relu(x)

        x = self.layer_3(x)
        x = torch.log_softmax(x, dim=1)

        return x

    def training_step(self, train_batch, batch_idx):
        x, y = train_batch
        logits = self.forward(x)
        loss = self.cross_entropy_loss(logits, y)
        accuracy = self.accuracy(logits, y)

        self.log("ptl/train_loss", loss)
        self.log("ptl/train_accuracy", accuracy)
        return loss

    def validation_step(self, val_batch, batch_idx):
        x, y = val_batch
        logits = self.forward(x)
        loss = self.cross_entropy_loss(logits, y)
        accuracy = self.accuracy(logits, y)
        self.eval_loss.append(loss)
        self.eval_accuracy.append(accuracy)
        return {"val_loss": loss, "val_accuracy": accuracy}

    def on_validation_epoch_end(self):
        avg_loss = torch.stack(self.eval_loss).mean()
        avg_acc = torch.stack(self.eval_accuracy).mean()
        self.log("ptl/val_loss", avg_loss, sync_dist=True)
        self.log("ptl/val_accuracy", avg_acc, sync_dist=True)
        self.eval_loss.clear()
        self.eval_accuracy.clear()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        return optimizer


class MNISTDataModule(pl.LightningDataModule):
    """The tutorial's data module, reading through `kubetune_trials.data` (any dataset there)."""

    def __init__(self, batch_size=128, dataset="mnist", smoke=False, seed=0, num_workers=0):
        super().__init__()
        self.batch_size = batch_size
        self.options = {"dataset": dataset, "smoke": smoke, "seed": seed, "image_size": 28, "channels": 1}
        self.num_workers = num_workers

    def setup(self, stage=None):
        full = data.load(split="train", **self.options)
        # The tutorial holds out 5000 of MNIST's 60000 training images for validation: 1/12.
        n_val = max(1, len(full) // 12)
        generator = torch.Generator().manual_seed(self.options["seed"])
        self.mnist_train, self.mnist_val = random_split(full, [len(full) - n_val, n_val], generator=generator)
        self.mnist_predict = data.load(split="test", **self.options)

    def train_dataloader(self):
        return DataLoader(self.mnist_train, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(self.mnist_val, batch_size=self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self):
        return DataLoader(self.mnist_predict, batch_size=self.batch_size, num_workers=self.num_workers)


DEFAULT_CONFIG = {"layer_1_size": 128, "layer_2_size": 256, "lr": 1e-3, "batch_size": 64}


def _quiet_lightning() -> None:
    """No banners ("GPU available: ..."), no hints about data loader workers: keep trial logs readable."""
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.* is deprecated.*")


def train(config: dict[str, Any]) -> None:
    """The trainable: `trainer.fit` with kubetune's report-and-checkpoint callback."""
    config = {**DEFAULT_CONFIG, **config}
    _quiet_lightning()
    common.setup(config)  # threads, seeds
    opts = common.data_options(config, default_dataset="mnist")

    model = MNISTClassifier(config)
    dm = MNISTDataModule(
        batch_size=int(config["batch_size"]), num_workers=int(config.get("num_workers", 0)), **opts
    )
    trainer = pl.Trainer(
        max_epochs=common.epochs(config, default=10),
        accelerator="auto",  # the GPU when the trial has one
        devices=1,
        logger=TensorBoardLogger(save_dir=config.get("log_dir", os.getcwd()), name="lightning_logs", version=""),
        callbacks=[
            kl.ReportCheckpointCallback(
                {"loss": "ptl/val_loss", "mean_accuracy": "ptl/val_accuracy"}, on="validation_end"
            )
        ],
        enable_checkpointing=False,  # kubetune checkpoints, as often as the experiment says
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    with tempfile.TemporaryDirectory(prefix="kubetune-resume-") as tmp:
        # None on a fresh start; else a .ckpt with the restored state and this trial's lr.
        ckpt_path = kl.resume_checkpoint_path(tmp, optimizer_overrides={"lr": config["lr"]})
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
