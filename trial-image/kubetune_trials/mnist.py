"""Ray Tune's "getting started" MNIST example, as a kubetune trainable (also the quickstart).

The model is the tutorial's tiny ConvNet, trained with SGD; the search space is `lr` and
`momentum`; each iteration trains on 512 samples, tests on 256 and reports `mean_accuracy`.

    trainable:
      entrypoint: kubetune_trials.mnist:train
      config: {dataset: digits}          # the quickstart: scikit-learn's digits, no download
    parameters:
      lr: {loguniform: {min: 1.0e-3, max: 0.3}}
      momentum: {uniform: {min: 0.1, max: 0.9}}

Config keys: `lr` (0.01), `momentum` (0.5), `batch_size` (64), `epochs` (10 iterations),
`epoch_size` (512 training samples per iteration, 0 for the whole set; digits and synthetic
default to the whole set), `test_size` (256; likewise),
`dataset` (mnist; or fashion_mnist, cifar10, digits, synthetic), and the shared keys of
`common.py` (`smoke`, `amp`, `deterministic`, `fail_at`, ...).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim

from kubetune_trials import common, data

# The tutorial's budget per iteration: a fraction of MNIST, so that an iteration takes a moment.
# The small datasets (digits: 1437 training images) are used whole.
EPOCH_SIZE = 512
TEST_SIZE = 256
SMALL_DATASETS = ("digits", "synthetic")


class ConvNet(nn.Module):
    """The tutorial's model: one 3x3 convolution and one linear layer, for 1x28x28 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, kernel_size=3)
        self.fc = nn.Linear(192, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 3))  # 3 x 26 x 26 -> 3 x 8 x 8
        x = x.view(-1, 192)
        x = self.fc(x)
        return F.log_softmax(x, dim=1)


def build(config: dict[str, Any], dev: torch.device) -> common.Recipe:
    """Model, optimiser and data for one trial's config."""
    opts = common.data_options(config, default_dataset="mnist")
    small = opts["dataset"] in SMALL_DATASETS
    model = ConvNet().to(dev)
    optimizer = optim.SGD(model.parameters(), lr=config.get("lr", 0.01), momentum=config.get("momentum", 0.5))
    return common.Recipe(
        model=model,
        optimizer=optimizer,
        train_set=data.load(split="train", image_size=28, channels=1, **opts),
        val_set=data.load(split="test", image_size=28, channels=1, **opts),
        epochs=common.epochs(config, default=10),
        batch_size=int(config.get("batch_size", 64)),
        report_as={"mean_accuracy": "accuracy"},
        loss_fn=F.nll_loss,  # the model outputs log-probabilities
        max_train_samples=config.get("epoch_size", 0 if small else EPOCH_SIZE) or None,
        max_val_samples=config.get("test_size", 0 if small else TEST_SIZE) or None,
    )


def train(config: dict[str, Any]) -> None:
    """The trainable: one reported iteration per (partial) epoch."""
    dev = common.setup(config)
    common.fit(build(config, dev), config, dev)
