"""ResNet18 on FashionMNIST, as in itwinai's Ray Tune example, as a kubetune trainable.

`torchvision.models.resnet18(num_classes=10)` with its first convolution taking 1 channel
instead of 3, trained with SGD (`lr`, `momentum`, `weight_decay`); every epoch reports
`val_accuracy` and `val_loss` on the test split.

    trainable:
      entrypoint: kubetune_trials.resnet:train
    parameters:
      lr: {uniform: {min: 0.001, max: 0.1}}
      momentum: {uniform: {min: 0.5, max: 0.99}}
      weight_decay: {uniform: {min: 0.0, max: 0.001}}

With `distributed` in the experiment the same recipe runs data-parallel on a Ray Train
TorchTrainer (`ddp.run`, the runner of the `ddp` seed); without it, in the trial's process.

Config keys: `lr` (0.01), `momentum` (0.9), `weight_decay` (5e-4), `batch_size` (64), `epochs`
(10), `dataset` (fashion_mnist; or mnist, cifar10, digits, synthetic: images are made 1x28x28),
and the shared keys of `common.py` (`smoke`, `amp`, `deterministic`, `fail_at`, ...).
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn, optim

from kubetune import trial
from kubetune_trials import common, data, ddp


def make_model() -> nn.Module:
    """ResNet18 for 10 classes whose first convolution reads grey (1-channel) images."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def build(config: dict[str, Any], dev: torch.device) -> common.Recipe:
    opts = common.data_options(config, default_dataset="fashion_mnist")
    model = make_model().to(dev)
    optimizer = optim.SGD(
        model.parameters(),
        lr=config.get("lr", 0.01),
        momentum=config.get("momentum", 0.9),
        weight_decay=config.get("weight_decay", 5e-4),
    )
    return common.Recipe(
        model=model,
        optimizer=optimizer,
        train_set=data.load(split="train", image_size=28, channels=1, **opts),
        val_set=data.load(split="test", image_size=28, channels=1, **opts),
        epochs=common.epochs(config, default=10),
        batch_size=int(config.get("batch_size", 64)),
        report_as={"val_accuracy": "accuracy", "val_loss": "loss"},
    )


def train(config: dict[str, Any]) -> None:
    """The trainable: data-parallel when the experiment is `distributed`, else in-process."""
    if trial.context().distributed:
        ddp.run(config, build)  # the same recipe, one copy per TorchTrainer worker
        return
    dev = common.setup(config)
    common.fit(build(config, dev), config, dev)
