"""Image classification: a small CNN, an MLP and multinomial logistic regression on the shipped 5,000 MNIST
digits (4,500 train / 500 validation, stratified by the seed), or on CIFAR-10 from a user directory in its
python-pickle layout (``data=DIR``; the CNN adapts to 3×32×32 inputs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from specopt._checks import check_positive_int
from specopt.tasks.base import Task, init_model
from specopt.tasks.data import DataError, load_cifar10, load_mnist


class ImageTask(Task):
    """Shared data handling: train/validation split and deterministic minibatches."""

    scheme = "image"

    def __init__(self, seed: int = 0, data: str | None = None, batch_size: int = 128, val_size: int = 500):
        super().__init__(seed)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if data is not None and not str(data).endswith((".csv", ".csv.gz")):
            (x, y), (vx, vy) = load_cifar10(data)
            if len(y) < self.batch_size:
                raise DataError(f"CIFAR-10 directory {data}: its data_batch_* files hold {len(y)} images, fewer "
                                f"than one training batch of {self.batch_size}")
        else:
            images, labels = load_mnist(data)
            if len(labels) < val_size + self.batch_size:
                raise DataError(f"MNIST CSV {data or 'shipped'} has {len(labels)} rows; training needs at least "
                                f"{val_size + self.batch_size}: {val_size} held out for validation and one batch of "
                                f"{self.batch_size}")
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(12345))
            val, train = perm[:val_size], perm[val_size:]
            x, y, vx, vy = images[train], labels[train], images[val], labels[val]
        mean, std = x.mean(), x.std()
        self.x, self.y = (x - mean) / std, y
        self.vx, self.vy = (vx - mean) / std, vy
        self.classes = int(max(int(y.max()), int(vy.max())) + 1)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    units_per_example = 1

    def batch(self, step: int):
        return self.batch_of(step, self.batch_size)

    def batch_of(self, step: int, batch_size: int):
        idx = torch.randint(0, len(self.y), (batch_size,), generator=self.generator(step))
        return self.x[idx], self.y[idx]

    def loss(self, model, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def validation_loss(self, model) -> float:
        was_training = model.training
        model.eval()
        value = float(F.cross_entropy(model(self.vx), self.vy))
        model.train(was_training)
        return value


    def units_per_step(self) -> int:
        return self.batch_size


class CNN(ImageTask):
    """Two conv layers (3×3, 32 and 64 channels, ReLU, 2×2 max-pool), a hidden linear layer, a head."""

    name = "cnn"

    def __init__(self, seed: int = 0, data: str | None = None, batch_size: int = 128, width: int = 32):
        super().__init__(seed, data, batch_size)
        self.width = check_positive_int(width, f"{self.name} width")

    def build_model(self) -> nn.Module:
        c, h, w = self.image_shape
        k = self.width

        def build():
            return nn.Sequential(
                nn.Conv2d(c, k, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(k, 2 * k, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * k * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Linear(128, self.classes))
        return init_model(build, self.seed)


class MLP(ImageTask):
    """Flattened pixels → width → width → classes, ReLU."""

    name = "mlp"

    def __init__(self, seed: int = 0, data: str | None = None, batch_size: int = 128, width: int = 256):
        super().__init__(seed, data, batch_size)
        self.width = check_positive_int(width, f"{self.name} width")

    def build_model(self) -> nn.Module:
        d = int(torch.tensor(self.image_shape).prod())
        return init_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(d, self.width), nn.ReLU(),
                                                nn.Linear(self.width, self.width), nn.ReLU(),
                                                nn.Linear(self.width, self.classes)), self.seed)


class LogisticRegression(ImageTask):
    """Multinomial logistic regression on flattened pixels: a convex problem."""

    name = "logreg"
    scheme = "image"

    def build_model(self) -> nn.Module:
        d = int(torch.tensor(self.image_shape).prod())
        return init_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(d, self.classes)), self.seed)
