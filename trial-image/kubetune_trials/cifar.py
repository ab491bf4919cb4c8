"""The PyTorch "Hyperparameter tuning with Ray Tune" tutorial (CIFAR10), as a kubetune trainable.

The tutorial's `Net` with tunable hidden sizes `l1`/`l2`, SGD with tunable `lr` and `batch_size`;
the training set is split 80/20 into train/validation and every epoch reports the validation
`loss` and `accuracy`. After the search, `test_accuracy` gives the test-set accuracy of a
trial's checkpoint (the tutorial's "Best trial test set accuracy").

    trainable:
      entrypoint: kubetune_trials.cifar:train
    parameters:
      l1: {powersOfTwo: {min: 4, max: 256}}
      l2: {powersOfTwo: {min: 4, max: 256}}
      lr: {loguniform: {min: 1.0e-4, max: 1.0e-1}}
      batch_size: {choice: [8, 16, 32, 64]}

Config keys: `l1` (120), `l2` (84), `lr` (0.001), `momentum` (0.9), `batch_size` (16), `epochs`
(10), `dataset` (cifar10; or digits, synthetic, mnist, fashion_mnist: images are resized to
3x32x32), and the shared keys of `common.py` (`smoke`, `amp`, `deterministic`, `fail_at`, ...).
Uses the GPU when the trial has one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import random_split

from kubetune import trial
from kubetune_trials import common, data


class Net(nn.Module):
    """The tutorial's CNN for 3x32x32 images; l1 and l2 are the hidden layer sizes."""

    def __init__(self, l1: int = 120, l2: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, l1)
        self.fc2 = nn.Linear(l1, l2)
        self.fc3 = nn.Linear(l2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # flatten all dimensions except batch
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_model(config: dict[str, Any]) -> Net:
    return Net(int(config.get("l1", 120)), int(config.get("l2", 84)))


def build(config: dict[str, Any], dev: torch.device) -> common.Recipe:
    opts = common.data_options(config, default_dataset="cifar10")
    model = make_model(config).to(dev)
    optimizer = optim.SGD(model.parameters(), lr=config.get("lr", 1e-3), momentum=config.get("momentum", 0.9))

    # As in the tutorial: 80% of the training set to train on, 20% to validate (a fixed split).
    trainset = data.load(split="train", image_size=32, channels=3, **opts)
    n_train = int(len(trainset) * 0.8)
    train_subset, val_subset = random_split(
        trainset, [n_train, len(trainset) - n_train], generator=torch.Generator().manual_seed(opts["seed"])
    )
    return common.Recipe(
        model=model,
        optimizer=optimizer,
        train_set=train_subset,
        val_set=val_subset,
        epochs=common.epochs(config, default=10),
        batch_size=int(config.get("batch_size", 16)),
        report_as={"loss": "loss", "accuracy": "accuracy"},
    )


def train(config: dict[str, Any]) -> None:
    """The trainable (the tutorial's `train_cifar`)."""
    dev = common.setup(config)
    common.fit(build(config, dev), config, dev)


def test_accuracy(checkpoint_dir: str, config: dict[str, Any]) -> float:
    """Test-set accuracy of the model in a trial's checkpoint directory.

    For instance, with the driver's results::

        best = results.get_best_result("loss", "min")
        with best.checkpoint.as_directory() as d:
            print("Best trial test set accuracy:", cifar.test_accuracy(d, best.config))
    """
    dev = common.device()
    state, _meta = trial.read_state(checkpoint_dir)
    model = make_model(config).to(dev)
    model.load_state_dict(state["model"])
    opts = common.data_options(config, default_dataset="cifar10")
    testset = data.load(split="test", image_size=32, channels=3, **opts)
    loader = torch.utils.data.DataLoader(testset, batch_size=256, shuffle=False)
    _loss, accuracy = common.evaluate(model, loader, dev)
    return accuracy
