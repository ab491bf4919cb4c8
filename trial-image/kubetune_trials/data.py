"""One data loader for every seed trainable.

    from kubetune_trials import data
    train_set = data.load("mnist", "train", image_size=28, channels=1)
    test_set = data.load("mnist", "test", image_size=28, channels=1)

`load` returns a `torch.utils.data.Dataset` of `(image, label)` pairs, images as float tensors
shaped `(channels, image_size, image_size)` and normalised, labels in 0..9. The datasets:

* `mnist`, `fashion_mnist`, `cifar10`: the real torchvision datasets. They are downloaded once per
  node into `trial.data_dir(<name>)` (`KUBETUNE_DATA_DIR`, shared by the trials of a node); a file
  lock makes concurrent trials wait for one download instead of corrupting each other's.
* `digits`: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), scaled up to
  the image size and replicated to the channels the model needs, split 80/20 into train/test
  with a fixed seed, so every trial validates on the same images.
* `synthetic`: generated images whose content depends on the class (a smooth class prototype plus
  noise), so a model can learn it; seeded, so every trial sees the same data.

`smoke=True` shrinks any of them to a few dozen samples (for `kubetune run --smoke` and tests).
The `seed` is the *data* seed (split and generation), deliberately not the trial's seed: trials
are only comparable when they are evaluated on the same data.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from kubetune import trial

# name -> (native image size, native channels, normalisation mean, std) of the real datasets;
# the means/stds are the usual ones quoted in the torchvision/PyTorch examples.
TORCHVISION = {
    "mnist": (28, 1, (0.1307,), (0.3081,)),
    "fashion_mnist": (28, 1, (0.2860,), (0.3530,)),
    "cifar10": (32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits", "synthetic")
NATIVE_SHAPE = {"digits": (8, 1), "synthetic": (28, 1), **{k: v[:2] for k, v in TORCHVISION.items()}}
NUM_CLASSES = 10

SMOKE_SIZES = {"train": 64, "test": 32}
SYNTHETIC_SIZES = {"train": 1024, "test": 256}

Split = Literal["train", "test"]


def load(
    dataset: str,
    split: Split = "train",
    image_size: int | None = None,
    channels: int | None = None,
    smoke: bool = False,
    seed: int = 0,
) -> Dataset:
    """The `split` ("train" or "test") of `dataset`, as `(channels, image_size, image_size)` images.

    `image_size`/`channels` default to the dataset's own. Raises ValueError for an unknown name.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets are: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits are: train, test")
    native_size, native_channels = NATIVE_SHAPE[dataset]
    image_size = image_size or native_size
    channels = channels or native_channels

    if dataset == "digits":
        data = _digits(split, image_size, channels, seed)
    elif dataset == "synthetic":
        n = SMOKE_SIZES[split] if smoke else SYNTHETIC_SIZES[split]
        data = _synthetic(split, n, image_size, channels, seed)
    else:
        data = _torchvision(dataset, split, image_size, channels)
    if smoke and len(data) > SMOKE_SIZES[split]:
        # A fixed, seeded choice of samples (not simply the first ones, which may be one class).
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(data), generator=generator)[: SMOKE_SIZES[split]]
        data = Subset(data, keep.tolist())
    return data


# ---------------------------------------------------------------- the real datasets


def _torchvision(dataset: str, split: Split, image_size: int, channels: int) -> Dataset:
    from filelock import FileLock
    from torchvision import datasets, transforms

    native_size, native_channels, mean, std = TORCHVISION[dataset]
    steps = []
    if image_size != native_size:
        steps.append(transforms.Resize(image_size))
    if channels != native_channels:
        # Grayscale(3) replicates a grey image into 3 channels; Grayscale(1) converts RGB to grey.
        steps.append(transforms.Grayscale(num_output_channels=channels))
        mean = (sum(mean) / len(mean),) * channels
        std = (sum(std) / len(std),) * channels
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    transform = transforms.Compose(steps)

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[dataset]
    root = trial.data_dir(dataset)
    # Several trials on one node may start at once: the first downloads, the others wait and reuse.
    with FileLock(str(root / ".download.lock")):
        try:
            return cls(root=str(root), train=(split == "train"), download=True, transform=transform)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision wraps its mirrors' errors in RuntimeError
            raise DatasetDownloadError(dataset, cls, root, exc) from None


class DatasetDownloadError(RuntimeError):
    """A torchvision dataset that is neither on disk nor downloadable: which one, from where, why, and
    how to provide it offline (one message instead of a traceback per mirror)."""

    def __init__(self, dataset: str, cls: type, root, cause: BaseException):
        sources = list(getattr(cls, "mirrors", None) or []) or [getattr(cls, "url", "") or "(torchvision's URL)"]
        reason = _root_cause(cause)
        super().__init__(
            f"cannot download the {dataset} dataset (torchvision {cls.__name__}) from {', '.join(sources)}: {reason}. "
            f"To run without network access, put its files into {root} on every node beforehand "
            f"(e.g. run the trainable once where the network is reachable and copy the folder), "
            f"and point KUBETUNE_DATA_DIR at the parent folder ({root.parent}); "
            f"or use a dataset that needs no download (digits, synthetic)"
        )


def _root_cause(exc: BaseException) -> str:
    """The innermost reason, e.g. "[Errno -2] Name or service not known", not the wrapping text."""
    reason = getattr(exc, "reason", None)
    if reason is not None:
        return str(reason)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.removeprefix("<urlopen error ").removesuffix(">")


# ---------------------------------------------------------------- digits (bundled with scikit-learn)


def _digits(split: Split, image_size: int, channels: int, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)

    # A fixed 80/20 split, the same in every trial and on every node.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(labels))
    train_idx, test_idx = order[:cut], order[cut:]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    idx = train_idx if split == "train" else test_idx
    return TensorDataset(_shape(images[idx], image_size, channels, mean, std), labels[idx])


# ---------------------------------------------------------------- synthetic


def _synthetic(split: Split, n: int, image_size: int, channels: int, seed: int) -> Dataset:
    # One smooth prototype per class (random 4x4 patterns scaled up), shared by both splits...
    protos_rng = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(NUM_CLASSES, channels, 4, 4, generator=protos_rng)
    prototypes = torch.nn.functional.interpolate(prototypes, size=image_size, mode="bilinear", align_corners=False)
    # ... and per split its own samples: a class's prototype plus noise.
    rng = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=rng)
    noise = torch.randn(n, channels, image_size, image_size, generator=rng)
    images = prototypes[labels] + 0.8 * noise
    return TensorDataset(images.float(), labels)


def _shape(images: torch.Tensor, image_size: int, channels: int, mean, std) -> torch.Tensor:
    """Resize (N, 1, H, W) images, replicate to `channels` and normalise."""
    if images.shape[-1] != image_size:
        images = torch.nn.functional.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    images = (images - mean) / std
    return images.repeat(1, channels, 1, 1).contiguous()
