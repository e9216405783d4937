"""Helpers shared by the operator test files."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize(module: nn.Module) -> None:
    """Every parameter and BN statistic away from its init, so that a wrong BN, bias or norm shows."""
    for p in module.parameters():
        p.copy_(torch.randn_like(p) * 0.5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
