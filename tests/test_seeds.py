"""The seed trainables of the trial image (kubetune_trials): they run, report, checkpoint, resume.

Outside Ray, `trial.report` would print; here `kubetune.trial._ray_report` is replaced by a
recorder that keeps every report and a copy of its checkpoint, and `_ray_get_checkpoint` is
pointed at a saved checkpoint to resume from. The DDP seed runs for real: a TorchTrainer with
2 workers x 0.5 CPU inside a Tune trial, failing once and resuming from its Tune checkpoint.
"""

from __future__ import annotations

import importlib
import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune import trial
from kubetune_trials import common, data

SEEDS = ["mnist", "cifar", "resnet", "lightning_mnist", "sleep"]
# The metrics each seed reports.
METRICS = {
    "mnist": {"mean_accuracy"},
    "cifar": {"loss", "accuracy"},
    "resnet": {"val_accuracy", "val_loss"},
    "lightning_mnist": {"loss", "mean_accuracy"},
    "sleep": {"score", "loss"},
    "ddp": {"loss", "accuracy", "train_loss"},
}


@dataclass
class Report:
    iteration: int
    metrics: dict[str, Any]
    checkpoint: Path | None


@pytest.fixture
def reports(tmp_path, monkeypatch):
    """Record trial.report calls (with copies of their checkpoints) instead of printing them."""
    recorded: list[Report] = []
    numbers = itertools.count()

    def record(metrics, checkpoint_dir):
        copy = None
        if checkpoint_dir:
            copy = tmp_path / f"checkpoint-{next(numbers)}"
            shutil.copytree(checkpoint_dir, copy)
        recorded.append(Report(trial.iteration(), dict(metrics), copy))

    monkeypatch.setattr(trial, "_ray_report", record)
    monkeypatch.chdir(tmp_path)  # Lightning's TensorBoard logs go to the working directory
    yield recorded
    trial.bind(trial.TrialContext())


def bind(**kwargs) -> None:
    trial.bind(trial.TrialContext(**{"seed": 0, "checkpoint_frequency": 1, **kwargs}))


def resume_from(monkeypatch, checkpoint_dir: Path | None) -> None:
    """Make trial.load_state() restore `checkpoint_dir`, as Ray would after a retry or PBT exploit."""
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    monkeypatch.setattr(trial, "_ray_get_checkpoint", lambda: checkpoint)


def run_seed(name: str, **config) -> None:
    module = importlib.import_module(f"kubetune_trials.{name}")
    if name == "sleep":
        config = {"iterations": config.pop("epochs", 2), "sleep_s": 0.0, **config}
    module.train(config)


# ---------------------------------------------------------------- data


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        data.load("imagenet", "train")
    message = str(err.value)
    assert "imagenet" in message
    for name in ("mnist", "fashion_mnist", "cifar10", "digits", "synthetic"):
        assert name in message


def test_digits_split_is_fixed_and_shaped_for_the_model():
    train = data.load("digits", "train", image_size=28, channels=3)
    test = data.load("digits", "test", image_size=28, channels=3)
    assert len(train) + len(test) == 1797 and len(test) == pytest.approx(1797 * 0.2, abs=1)
    image, label = train[0]
    assert image.shape == (3, 28, 28) and 0 <= int(label) < 10
    assert torch.equal(image[0], image[2])  # grey replicated to 3 channels
    again = data.load("digits", "train", image_size=28, channels=3)
    assert torch.equal(train.tensors[0], again.tensors[0])  # the same split every time
    smoke = data.load("digits", "train", image_size=8, channels=1, smoke=True)
    assert len(smoke) == data.SMOKE_SIZES["train"] and smoke[0][0].shape == (1, 8, 8)


def test_synthetic_is_seeded_and_class_dependent():
    a = data.load("synthetic", "train", image_size=16, channels=1, seed=1)
    b = data.load("synthetic", "train", image_size=16, channels=1, seed=1)
    assert torch.equal(a.tensors[0], b.tensors[0])
    images, labels = a.tensors
    # Class means differ far more than the noise of a mean over ~100 samples.
    means = torch.stack([images[labels == c].mean(0) for c in range(10)])
    assert (means[0] - means[1]).abs().mean() > 0.2
    assert len(data.load("synthetic", "test", smoke=True)) == data.SMOKE_SIZES["test"]


@pytest.mark.parametrize("name, mode, channels", [("mnist", "L", 3), ("fashion_mnist", "L", 1), ("cifar10", "RGB", 1)])
def test_real_datasets_download_into_the_data_dir_with_a_lock(name, mode, channels, tmp_path, monkeypatch):
    """No internet here: a stand-in for the torchvision class checks what `load` asks of it."""
    import torchvision
    from PIL import Image

    calls = []

    class FakeDataset:
        def __init__(self, root, train, download, transform):
            calls.append({"root": root, "train": train, "download": download})
            self.transform = transform
            assert (Path(root) / ".download.lock").exists()  # held while "downloading"

    cls = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}[name]
    monkeypatch.setattr(torchvision.datasets, cls, FakeDataset)
    trial.bind(trial.TrialContext(data_dir=str(tmp_path)))
    try:
        dataset = data.load(name, "test", image_size=32, channels=channels)
    finally:
        trial.bind(trial.TrialContext())
    assert calls == [{"root": str(tmp_path / name), "train": False, "download": True}]
    size = data.NATIVE_SHAPE[name][0]
    image = dataset.transform(Image.new(mode, (size, size), color=128 if mode == "L" else (128, 64, 32)))
    assert image.shape == (channels, 32, 32)


@pytest.mark.parametrize("name, cls, attr", [("mnist", "MNIST", "mirrors"), ("cifar10", "CIFAR10", "url")])
def test_a_failed_download_says_which_dataset_from_where_and_how_to_provide_it(name, cls, attr, tmp_path, monkeypatch):
    """The real torchvision download, from a local port nothing listens on: one message, no mirror tracebacks."""
    import torchvision

    from tests.conftest import free_port

    source = f"http://127.0.0.1:{free_port()}/{name}/"
    value = [source] if attr == "mirrors" else source + "cifar-10-python.tar.gz"
    monkeypatch.setattr(getattr(torchvision.datasets, cls), attr, value)
    trial.bind(trial.TrialContext(data_dir=str(tmp_path / "data")))
    try:
        with pytest.raises(data.DatasetDownloadError) as info:
            data.load(name, "test")
    finally:
        trial.bind(trial.TrialContext())
    message = str(info.value)
    assert f"the {name} dataset" in message and "127.0.0.1" in message
    assert "Connection refused" in message
    assert "KUBETUNE_DATA_DIR" in message and str(tmp_path / "data" / name) in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained tracebacks


# ---------------------------------------------------------------- every seed runs


@pytest.mark.parametrize("dataset", ["synthetic", "digits"])
@pytest.mark.parametrize("name", SEEDS)
def test_seed_runs_two_iterations(name, dataset, reports):
    bind()
    run_seed(name, dataset=dataset, smoke=True, epochs=2)
    assert [r.iteration for r in reports] == [1, 2]
    for r in reports:
        assert METRICS[name] <= set(r.metrics), r.metrics
        assert r.checkpoint is not None  # checkpoint.frequency 1
    state, meta = trial.read_state(reports[-1].checkpoint)
    assert meta["iteration"] == 2 and state


def test_checkpoint_frequency_and_at_end_are_honoured(reports):
    bind(checkpoint_frequency=2, checkpoint_at_end=True)
    run_seed("mnist", dataset="synthetic", smoke=True, epochs=3)
    assert [r.checkpoint is not None for r in reports] == [False, True, True]  # 2: frequency, 3: at end
    bind(checkpoint_frequency=0, checkpoint_at_end=False)
    reports.clear()
    run_seed("cifar", dataset="synthetic", smoke=True, epochs=2)
    assert [r.checkpoint for r in reports] == [None, None]


def test_ddp_recipe_runs_in_process_with_amp_and_determinism(reports):
    from kubetune_trials import ddp

    bind()
    config = {"dataset": "digits", "smoke": True, "epochs": 2, "amp": True, "deterministic": True}
    try:
        dev = common.setup(config)
        assert torch.are_deterministic_algorithms_enabled()
        common.fit(ddp.build(config, dev), config, dev)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [r.iteration for r in reports] == [1, 2]
    assert METRICS["ddp"] <= set(reports[-1].metrics)


# ---------------------------------------------------------------- checkpoints and resuming


def test_state_round_trips(tmp_path):
    bind()
    model = torch.nn.Linear(3, 2)
    trial.save_state(tmp_path, {"model": model.state_dict(), "epoch": 4, "note": "x"})
    state, meta = trial.read_state(tmp_path)
    assert state["epoch"] == 4 and state["note"] == "x"
    assert torch.equal(state["model"]["weight"], model.state_dict()["weight"])
    assert meta["iteration"] == trial.iteration()


@pytest.mark.parametrize("name", ["mnist", "cifar", "resnet"])
def test_resumed_trial_continues_exactly(name, reports, monkeypatch):
    """Resumed from its checkpoint after epoch 1, a trial reports epochs 2 and 3 -- with the
    very metrics of an uninterrupted run (model, optimiser and shuffling all restored)."""
    config = {"dataset": "digits", "smoke": True, "epochs": 3}
    bind()
    run_seed(name, **config)
    uninterrupted = [r.metrics for r in reports]
    after_first = reports[0].checkpoint

    reports.clear()
    bind()
    resume_from(monkeypatch, after_first)
    run_seed(name, **config)
    assert [r.iteration for r in reports] == [2, 3]
    for resumed, original in zip(reports, uninterrupted[1:]):
        assert resumed.metrics == pytest.approx(original, rel=1e-5)


def test_sleep_resumes_from_its_iteration(reports, monkeypatch):
    from kubetune_trials import sleep

    bind(checkpoint_frequency=5)
    sleep.train({"x": 0.2, "iterations": 7, "sleep_s": 0})
    assert [r.iteration for r in reports] == list(range(1, 8))
    assert [r.checkpoint is not None for r in reports] == [False] * 4 + [True, False, True]

    fifth = reports[4].checkpoint
    reports.clear()
    bind(checkpoint_frequency=5)
    resume_from(monkeypatch, fifth)
    sleep.train({"x": 0.2, "iterations": 7, "sleep_s": 0})
    assert [r.metrics["iteration"] for r in reports] == [6, 7]
    assert reports[-1].metrics["score"] == sleep.score(0.2, 7) and reports[-1].metrics["restored"]


def test_fail_at_fails_once_then_resumed_runs_on(reports, monkeypatch):
    bind()
    with pytest.raises(RuntimeError, match="fail_at"):
        run_seed("sleep", epochs=4, fail_at=3)
    bind()
    with pytest.raises(RuntimeError, match="fail_at"):
        run_seed("mnist", dataset="synthetic", smoke=True, epochs=4, fail_at=2)
    checkpoint = reports[-1].checkpoint  # mnist after iteration 1
    reports.clear()
    bind()
    resume_from(monkeypatch, checkpoint)
    run_seed("mnist", dataset="synthetic", smoke=True, epochs=4, fail_at=2)
    assert [r.iteration for r in reports] == [2, 3, 4]


def test_restore_keeps_the_configs_hyperparameters():
    """After a PBT exploit the checkpoint is the donor's but lr/momentum are the new config's."""
    donor = torch.nn.Linear(2, 2)
    donor_opt = torch.optim.SGD(donor.parameters(), lr=0.1, momentum=0.9)
    donor(torch.ones(1, 2)).sum().backward()
    donor_opt.step()
    state = common.snapshot(donor, donor_opt, None, epoch=3)

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.3)
    assert common.restore(state, model, optimizer) == 4
    assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[0]["momentum"] == 0.3
    assert torch.equal(model.weight, donor.weight)
    assert optimizer.state  # the momentum buffers came along


def test_lightning_resumes_with_the_new_lr(reports, monkeypatch, tmp_path):
    from kubetune import lightning as kl

    bind()
    run_seed("lightning_mnist", dataset="digits", smoke=True, epochs=2, lr=0.01)
    assert (tmp_path / "lightning_logs").is_dir()  # TensorBoard logs in the working directory
    first = reports[0].checkpoint

    resume_from(monkeypatch, first)
    bind()
    path = kl.resume_checkpoint_path(tmp_path, optimizer_overrides={"lr": 0.003})
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["epoch"] == 0
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.003

    reports.clear()
    bind()
    run_seed("lightning_mnist", dataset="digits", smoke=True, epochs=3, lr=0.003)
    assert [(r.iteration, r.metrics["epoch"]) for r in reports] == [(2, 1), (3, 2)]


def test_lightning_callback_names_missing_metrics():
    from kubetune import lightning as kl

    callback = kl.ReportCheckpointCallback({"loss": "val/nope"})

    class FakeTrainer:
        callback_metrics = {"ptl/val_loss": torch.tensor(1.0)}

    with pytest.raises(KeyError, match="ptl/val_loss"):
        callback._collect(FakeTrainer())
    with pytest.raises(ValueError, match="validation_end"):
        kl.ReportCheckpointCallback(on="test_end")


def test_cifar_test_accuracy_reads_a_checkpoint(reports):
    from kubetune_trials import cifar

    bind()
    config = {"dataset": "digits", "smoke": True, "epochs": 1, "l1": 16, "l2": 8}
    cifar.train(config)
    accuracy = cifar.test_accuracy(str(reports[-1].checkpoint), config)
    assert 0.0 <= accuracy <= 1.0


# ---------------------------------------------------------------- DDP in a real Tune trial


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(480)  # 40-80 s; it hung once in CI (900 s): conftest prints Ray's state before the timeout
def test_ddp_in_a_tune_trial_checkpoints_and_resumes(ray_local, tmp_path):
    """2 workers x 0.5 CPU over gloo, inside a Tune trial that needs 0.01 CPU.

    The trial fails at iteration 2 (after a checkpoint at 1), is retried by Tune, resumes from
    its Tune checkpoint and is then stopped by Tune at iteration 3 while the workers would go
    on: Tune holds the checkpoints, and the workers' resources are freed.
    """
    import time

    from ray import tune

    distributed = {"workers": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 0, "backend": "auto"}

    def run_trial(config):
        # What the driver does in each trial's process: bind the experiment's context.
        from kubetune import trial as trial_api
        from kubetune_trials import ddp

        trial_api.bind(trial_api.TrialContext(
            seed=1, checkpoint_frequency=1, max_iterations=3, distributed=distributed,
            trial_id=tune.get_context().get_trial_id(),
        ))
        ddp.train(config)

    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": 0.01}),
        param_space={"dataset": "synthetic", "smoke": True, "epochs": 4, "batch_size": 16, "fail_at": 2},
        tune_config=tune.TuneConfig(metric="accuracy", mode="max"),
        run_config=tune.RunConfig(
            name="ddp", storage_path=str(tmp_path), verbose=0,
            stop={"training_iteration": 3},
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    result = tuner.fit()[0]
    assert result.error is None
    assert result.metrics["training_iteration"] == 3
    assert result.metrics["iterations_since_restore"] == 2  # resumed after iteration 1
    assert METRICS["ddp"] <= set(result.metrics)
    # Tune knows the checkpoints: one per iteration, the last one that of iteration 3.
    assert len(result.best_checkpoints) == 3
    with result.checkpoint.as_directory() as directory:
        state, meta = trial.read_state(directory)
    assert meta["iteration"] == 3 and state["epoch"] == 2
    assert any(p.name.startswith("train-") and "-from-" in p.name for p in Path(result.path).iterdir())
    # The stopped trial's Train run is gone: all CPUs are free again.
    deadline = time.monotonic() + 20
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == 2
