"""The proxy trainer: train an ``nn.Module`` for a few epochs and report validation accuracy after each.

Choices, made for ranking fidelity at low cost (a proxy only has to order candidates, not reach SOTA):
- AdamW (lr 3e-3, batches of 64, weight decay 0.05, no decay on norms, biases and position tables): robust across convs
  and attention without per-operator tuning, which SGD would need;
- one epoch of linear warm-up folded into a per-step cosine schedule, so short runs still anneal;
- label smoothing 0.1, and light augmentation (random crop with 2-px zero padding, horizontal flip): enough
  against the overfitting of a few thousand images, cheap on a CPU;
- a fixed training subset (the first ``max_train`` images of the shuffled training split) so that an epoch
  costs the same for every candidate; validation on a fixed part of the held-out split (``max_val`` images);
- all cores a trial is given (``threads``); on CUDA, bfloat16 autocast, channels-last memory, the training
  images kept on the GPU as uint8 and augmented there (the offsets and flips are drawn from the trial's CPU
  generator, so the draws are the same on any device), and the loss read back every ``SYNC_EVERY`` steps
  rather than every step (each read waits for the GPU).
A loss that turns NaN or infinite raises ``FloatingPointError``: the trial fails, the search goes on.

Each evaluation also keeps which validation images the network got right (``TrainResult.correct``, the last
epoch's): two networks scored on the same images are compared by where they disagree (``nas.stats``), which
measures the noise of their difference more finely than two accuracies can.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainConfig", "TrainResult", "train_proxy", "evaluate", "correct_per_image", "epoch_callbacks"]

SYNC_EVERY = 32  # on CUDA, steps between reads of the loss (the NaN check); on CPU every step is read


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_train: int | None = 1536
    max_val: int | None = 1000  # a fixed part of the validation split: evaluation costs little per epoch
    augment: bool = True
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto": cuda when available, else cpu


@dataclass
class TrainResult:
    accuracies: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    correct: torch.Tensor | None = None  # the last epoch's per-image correctness on the validation images (bool)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("table") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _augment_draws(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random part of ``_augment`` for ``n`` images, drawn from the CPU generator ``gen``: each image's row
    and column offset of the crop (0..4) and whether it is flipped. The draws never depend on where the images
    are, so a trial on a GPU sees the augmentation it would see on a CPU."""
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    return dy, dx, flip


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop after 2-px zero padding, and a horizontal flip, per image (float input), computed on ``x``'s
    device: only the draws (3 small vectors of ``len(x)``) travel there, and the index grids are built there."""
    n, c, h, w = x.shape
    dy, dx, flip = (t.to(x.device, non_blocking=True) for t in _augment_draws(n, gen))
    padded = F.pad(x, (2, 2, 2, 2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 4)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    x = x.gather(3, cols)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - mean) / std


def _batch(x: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
           gen: torch.Generator | None = None, channels_last: bool = False) -> torch.Tensor:
    """A training batch: the uint8 images ``x[idx]`` (where ``x`` lies: on the GPU in a GPU trial) normalized,
    augmented with draws from ``gen`` when one is given, and in channels-last memory when asked."""
    xb = _normalize(x[idx], mean, std)
    if gen is not None:
        xb = _augment(xb, gen)
    return xb.contiguous(memory_format=torch.channels_last) if channels_last else xb


@torch.no_grad()
def correct_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 512,
                      device: torch.device | None = None) -> torch.Tensor:
    """Whether ``model``'s top-1 class is right, per uint8 image of ``x`` with labels ``y`` (a bool tensor)."""
    device = device or next(model.parameters()).device
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    model.eval()
    hits = []
    for i in range(0, len(x), batch_size):
        xb = _normalize(x[i:i + batch_size].to(device), mean_t, std_t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(xb)
        hits.append(logits.argmax(1).cpu() == y[i:i + batch_size])
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 512,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on uint8 images ``x`` with labels ``y``."""
    return correct_per_image(model, x, y, mean, std, batch_size, device).sum().item() / max(1, len(x))


EPOCH_CALLBACK = "on_train_epoch"


def epoch_callbacks(model: nn.Module) -> list[Callable[[int, int], None]]:
    """The ``on_train_epoch(epoch, epochs)`` methods of ``model``'s modules, in module order: an operator
    declares one to follow a schedule over training (dynamic convolution's softmax temperature), and the
    trainer calls each before every epoch, epochs counting from 1 out of ``epochs``, so a schedule written for
    the paper's training scales to the proxy's few epochs."""
    return [hook for m in model.modules() if callable(hook := getattr(m, EPOCH_CALLBACK, None))]


def train_proxy(model: nn.Module, data, config: TrainConfig = TrainConfig(),
                report: Callable[..., None] | None = None, *, per_image: bool = False) -> TrainResult:
    """Train ``model`` on ``data`` (a ``nas.data.ImageData``) for ``config.epochs`` epochs.

    After each epoch ``report(epoch, val_accuracy, mean_train_loss)`` is called (epochs count from 1); a
    scheduler may stop the trial there. With ``per_image``, ``report`` also gets ``correct=``: the epoch's
    per-image correctness on the validation images (a bool tensor), for a caller that records it before a
    stop can cut the trial off. Returns the per-epoch accuracies and losses, the throughput, and the last
    epoch's per-image correctness.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = _device(config.device)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x, y = data.train_x, data.train_y
    if config.max_train and len(x) > config.max_train:
        x, y = x[:config.max_train], y[:config.max_train]
    x, y = x.to(device), y.to(device)  # uint8 images: the full Fashion-MNIST training split is 47 MB
    sync_every = SYNC_EVERY if device.type == "cuda" else 1
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = min(steps_per_epoch, total // 2)
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    def lr_factor(s: int) -> float:  # linear warm-up, then cosine to zero
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    result = TrainResult()
    epoch_hooks = epoch_callbacks(model)
    for epoch in range(1, config.epochs + 1):
        for hook in epoch_hooks:
            hook(epoch, config.epochs)
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(x), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            xb = _batch(x, idx, mean, std, gen if config.augment else None, channels_last=device.type == "cuda")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(xb), y[idx], label_smoothing=config.label_smoothing)
            loss_sum += loss.detach().float()
            if (step + 1) % sync_every == 0 or step + 1 == steps_per_epoch:
                if not torch.isfinite(loss_sum):  # a NaN or inf stays in the sum: one read covers the steps since
                    raise FloatingPointError(f"the training loss became {loss.item()} by epoch {epoch}, "
                                             f"step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        result.train_seconds += time.perf_counter() - t0
        result.losses.append(loss_sum.item() / steps_per_epoch)
        vx, vy = data.val_x[:config.max_val], data.val_y[:config.max_val]
        result.correct = correct_per_image(model, vx, vy, data.mean, data.std, device=device)
        result.accuracies.append(result.correct.sum().item() / max(1, len(vx)))
        if report is not None:
            extra = {"correct": result.correct} if per_image else {}
            report(epoch, result.accuracies[-1], result.losses[-1], **extra)
    result.images_per_second = len(x) * config.epochs / max(result.train_seconds, 1e-9)
    return result
