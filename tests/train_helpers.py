"""A synthetic, easily learned image task for the trainer's tests."""

from __future__ import annotations

import torch
from torch import nn

from nas.data import ImageData


def square_task(n_train: int = 512, n_val: int = 256, size: int = 16, seed: int = 0) -> ImageData:
    """Ten classes: class k is a bright 4x4 square at the k-th of ten fixed places, on uint8 noise."""
    gen = torch.Generator().manual_seed(seed)
    places = [(1 + 5 * (k % 3), 1 + 4 * (k // 3)) for k in range(10)]  # rows 1, 6, 11; columns 1, 5, 9, 13
    def make(n):
        y = torch.randint(0, 10, (n,), generator=gen)
        x = torch.randint(0, 60, (n, 1, size, size), generator=gen, dtype=torch.uint8)
        for i, k in enumerate(y.tolist()):
            r, c = places[k]
            x[i, 0, r:r + 4, c:c + 3] = 230
        return x, y
    tx, ty = make(n_train)
    vx, vy = make(n_val)
    mean = tx.float().mean().item() / 255
    std = tx.float().std().item() / 255
    return ImageData(name="squares", train_x=tx, train_y=ty, val_x=vx, val_y=vy, num_classes=10,
                     mean=(mean,), std=(std,), source="synthetic")


def small_cnn(in_chans: int = 1, classes: int = 10, size: int = 16) -> nn.Module:
    """Two convs and a linear layer over the whole map (the task is about where the square is)."""
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * (size // 2) ** 2, classes))
