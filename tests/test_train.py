"""The proxy trainer (``nas.train``): it learns, it reports, it stops on a non-finite loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.train import TrainConfig, evaluate, train_proxy
from tests.train_helpers import small_cnn, square_task


def test_learns_an_easy_task_and_reports_every_epoch():
    data = square_task()
    reports = []
    cfg = TrainConfig(epochs=3, batch_size=32, max_train=None, augment=False, device="cpu")
    result = train_proxy(small_cnn(), data, cfg, report=lambda e, acc, loss: reports.append((e, acc, loss)))
    assert [r[0] for r in reports] == [1, 2, 3]
    assert result.accuracies == [r[1] for r in reports]
    assert result.losses == [r[2] for r in reports]
    assert result.accuracies[-1] >= 0.9  # chance is 0.1
    assert result.losses[-1] < result.losses[0]
    assert result.images_per_second > 0


def test_same_seed_same_result_other_seed_other_order():
    data = square_task(n_train=128, n_val=64)
    def run(seed):
        torch.manual_seed(0)  # the same initial weights every time
        return train_proxy(small_cnn(), data, TrainConfig(epochs=2, batch_size=32, seed=seed, device="cpu"))
    a, b, c = run(0), run(0), run(1)
    assert a.losses == b.losses and a.accuracies == b.accuracies
    assert a.losses != c.losses  # the seed sets the batch order and the augmentation


class _Counting(nn.Module):
    """Counts the images it sees in training mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 16, 10)
        self.seen = 0

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("max_train,expected", [(100, 100), (None, 300), (1000, 300)])
def test_an_epoch_sees_max_train_images(max_train, expected):
    data = square_task(n_train=300, n_val=10)
    model = _Counting()
    train_proxy(model, data, TrainConfig(epochs=2, batch_size=64, max_train=max_train, device="cpu"))
    assert model.seen == 2 * expected


class _Poisoned(nn.Module):
    """Fine for ``good_steps`` training steps, then its output turns NaN."""

    def __init__(self, good_steps: int):
        super().__init__()
        self.fc = nn.Linear(16 * 16, 10)
        self.left = good_steps

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if self.training:
            self.left -= 1
            if self.left < 0:
                y = y * float("nan")
        return y


def test_nan_loss_raises_with_the_epoch():
    data = square_task(n_train=256, n_val=10)
    cfg = TrainConfig(epochs=3, batch_size=64, max_train=None, device="cpu")  # 4 steps an epoch
    with pytest.raises(FloatingPointError, match="by epoch 2, step 2"):
        train_proxy(_Poisoned(good_steps=5), data, cfg)


class _Rule(nn.Module):
    """Predicts class 3 when the image's mean is above zero (normalized units), else class 7."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 3] = (x.mean((1, 2, 3)) > 0).float()
        logits[:, 7] = 0.5
        return logits


def test_evaluate_counts_correct_predictions():
    x = torch.cat([torch.full((5, 1, 4, 4), 200, dtype=torch.uint8), torch.full((7, 1, 4, 4), 10, dtype=torch.uint8)])
    y = torch.tensor([3, 3, 3, 1, 1] + [7, 7, 7, 7, 2, 2, 2])
    acc = evaluate(_Rule(), x, y, mean=(0.5,), std=(0.25,), batch_size=5)  # batches that straddle the classes
    assert acc == pytest.approx((3 + 4) / 12)


class _Scheduled(nn.Module):
    """Declares an epoch callback; records each call and how many images it saw in training before it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 16, 10)
        self.seen, self.calls = 0, []

    def on_train_epoch(self, epoch: int, epochs: int) -> None:
        self.calls.append((epoch, epochs, self.seen))

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return self.fc(x.flatten(1))


def test_an_operators_epoch_callback_runs_before_every_epoch():
    data = square_task(n_train=96, n_val=10)
    inner = _Scheduled()
    model = nn.Sequential(nn.Identity(), inner)  # found anywhere in the module tree
    train_proxy(model, data, TrainConfig(epochs=3, batch_size=32, max_train=None, device="cpu"))
    assert inner.calls == [(1, 3, 0), (2, 3, 96), (3, 3, 192)]


def test_augmentation_draws_are_the_same_on_any_device():
    """The crop offsets and flips come from the trial's CPU generator whatever device the images are on (the
    "meta" device stands in for a GPU here: it computes no values, but the draws and the generator's state
    after them are what a GPU trial would have); the CUDA test compares the images themselves."""
    from nas.train import _augment, _augment_draws

    x = torch.randn(16, 3, 8, 10)
    states = {}
    for device in ("cpu", "meta"):
        gen = torch.Generator().manual_seed(3)
        out = _augment(x.to(device), gen)
        assert out.shape == x.shape and out.device.type == device
        states[device] = gen.get_state()
    assert torch.equal(states["cpu"], states["meta"])

    dy, dx, flip = _augment_draws(16, torch.Generator().manual_seed(3))  # what _augment applied, image by image
    out = _augment(x, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 10]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)
