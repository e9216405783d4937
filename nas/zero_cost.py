"""Training-free scores of a network at initialization: rung 0 of the fidelity ladder.

Each score costs one or two forward/backward passes, so thousands of candidates can be ranked in the time
one proxy trains. Whether any of them ranks *our* candidates well is measured (``nas.stats``), not assumed.

- ``synflow``: Tanaka et al., "Pruning neural networks without any data by iteratively conserving synaptic
  flow", NeurIPS 2020, used as a NAS score by Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS",
  ICLR 2021. Every parameter replaced by its absolute value, an all-ones input, R = sum of the outputs,
  score = sum |theta * dR/dtheta|.
- ``snip``: Lee et al., "SNIP: Single-shot network pruning based on connection sensitivity", ICLR 2019.
  score = sum |theta * dL/dtheta|, L the mean cross-entropy on a batch (the gradient of L with respect to a
  multiplicative mask of ones, which is how the paper writes it).
- ``naswot``: Mellor et al., "Neural Architecture Search without Training", ICML 2021. Each image gets a
  binary code (which units of every ReLU are active); K_H[i, j] = N_A - Hamming(c_i, c_j), with N_A the code
  length; score = log |det K_H|.
- ``zico``: Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023.
  Gradients on ``splits`` mini-batches; score = sum over layers l of
  log( sum over the weights w of l of mean_b |g_w| / std_b(g_w) ).

Conventions and departures, all deliberate:

- "Weights" are the ``weight`` tensors of ``nn.Linear`` and ``nn.Conv*d`` modules, as in the zero-cost-proxies
  code (Abdelfattah et al.) and ZiCo's: biases, norm affines, attention position tables and layer scales are
  not summed. A layer for ZiCo is one such module.
- Nothing is mutated: every score runs the model through ``torch.func.functional_call`` on detached copies
  of its parameters and buffers, so parameters, running statistics and ``.grad`` are as they were, and the
  modules' train/eval flags are restored. Gradients come from ``torch.autograd.grad``.
- synflow runs in float64 (the product over a deep net's |weights| overflows or underflows float32), in eval
  mode. BatchNorm then applies its running statistics, at initialization mean 0 and variance 1: an affine map
  of scale |gamma| / sqrt(1 + eps). Per-sample norms (LayerNorm, opmix's LayerNorm2d, GroupNorm,
  InstanceNorm, RMSNorm) are bypassed (identity, which is their affine part at the default init gamma = 1,
  beta = 0): normalizing the positive all-ones signal per sample would erase the scale synflow measures and
  make signals negative. This matches the zero-cost-proxies convention of scoring synflow without BN
  (``bn=False``) as closely as a network whose norms cannot be switched off allows. Buffers are not made
  positive: an attention mask of -100 must stay a mask.
- naswot codes every module of the ReLU family: ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU, SELU, GELU,
  SiLU, Mish, Hardswish. The code is ``input > 0``: for ReLU exactly the paper's "unit active", for the smooth
  ones the sign of the pre-activation (where they pass the signal, roughly, versus squash it). Activations
  applied as functions (``F.relu``) are not seen; opmix's operators use modules. Train mode (batch
  statistics), as Mellor et al.'s code runs it. Two images with the same code make K_H singular: -inf.
- zico takes each split's own gradient. The official code calls ``backward`` per batch without zeroing the
  gradients, so its second "sample" is the sum of both; we follow the paper's definition instead. The standard
  deviation is the population one (``np.std`` in the official code), weights with zero deviation are left
  out, and a layer whose sum is 0 adds nothing (both as the official code).
- snip and zico run in train mode (batch statistics), as networks are trained and as both papers' code does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .errors import OpmixError, UnknownNameError

__all__ = ["synflow", "snip", "naswot", "zico", "score_all", "SCORES"]

SCORES = ("synflow", "snip", "naswot", "zico")

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
_PER_SAMPLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.RMSNorm)
_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Hardswish)


def _weight_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the Linear and Conv weights, each tensor once."""
    params = dict(model.named_parameters())
    names = [f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, _WEIGHTED)]
    return [n for n in dict.fromkeys(names) if n in params]


def _copy_state(model: nn.Module, dtype: torch.dtype | None = None, grad: bool = True) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters (leaves that record gradients) and buffers, floats cast to ``dtype``."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype, copy=True)

    state = {n: cast(p).requires_grad_(grad and p.is_floating_point()) for n, p in model.named_parameters()}
    state.update({n: cast(b) for n, b in model.named_buffers()})
    return state


@contextmanager
def _mode(model: nn.Module, train: bool) -> Iterator[None]:
    """``model.train(train)`` for the block, then every module's own flag back."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def _hooks(model: nn.Module, types: tuple[type, ...], hook: Callable) -> Iterator[int]:
    """A forward hook on every module of ``types`` for the block; yields how many were hooked."""
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def _weight_grads(model: nn.Module, state: dict[str, torch.Tensor], out: torch.Tensor) -> dict[str, torch.Tensor]:
    """d out / d weight for the Linear and Conv weights that ``out`` depends on."""
    names = [n for n in _weight_names(model) if state[n].requires_grad]
    grads = torch.autograd.grad(out, [state[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, grads) if g is not None}


def _saliency(state: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> float:
    """sum over the weights of |theta * grad|: synflow's and snip's per-weight scores, added up."""
    with torch.no_grad():
        return float(sum((state[n] * g).abs().sum() for n, g in grads.items()))


def synflow(model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float64) -> float:
    """Synaptic flow at initialization: sum over weights of |theta * dR/dtheta|, R = sum of the outputs of the
    all-|theta| network on an all-ones input of ``input_shape`` (with the batch, e.g. ``(1, 3, 32, 32)``).

    Data-free: it scores how much signal the architecture's paths can carry, in float64, eval mode, per-sample
    norms bypassed (see the module docstring). ``inf`` if even float64 overflows.
    """
    state = _copy_state(model, dtype, grad=False)
    for name, p in model.named_parameters():
        if p.is_floating_point():
            state[name] = state[name].abs().requires_grad_(True)
    device = next(iter(state.values())).device if state else None
    ones = torch.ones(tuple(input_shape), dtype=dtype, device=device)
    with _mode(model, False), _hooks(model, _PER_SAMPLE_NORMS, lambda m, args, out: args[0]):
        r = functional_call(model, state, (ones,)).sum()
    return _saliency(state, _weight_grads(model, state, r))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Connection sensitivity: sum over weights of |theta * dL/dtheta|, L the mean cross-entropy of (x, y).

    How much the loss would move if each connection were removed, summed: the network's trainable "mass".
    """
    state = _copy_state(model)
    with _mode(model, True):
        loss = F.cross_entropy(functional_call(model, state, (x,)), y)
    return _saliency(state, _weight_grads(model, state, loss))


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K_H| with K_H = N_A - Hamming distance between the images' binary activation codes.

    A network that gives different images different activation patterns separates them before any
    training; -inf when two images share a code. Raises ValueError if the model has no ReLU-like module.
    """
    kernel = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal kernel
        code = (args[0].detach().flatten(1) > 0).to(torch.float64)
        # agreements = both active + both inactive = N_A - Hamming distance, exactly (counts < 2**53)
        kernel = kernel + code @ code.T + (1 - code) @ (1 - code).T

    with torch.no_grad(), _mode(model, True), _hooks(model, _RELU_FAMILY, count) as hooked:
        if not hooked:
            names = ", ".join(t.__name__ for t in _RELU_FAMILY)
            raise OpmixError(f"naswot needs activation modules ({names}); {type(model).__name__} has none")
        functional_call(model, _copy_state(model, grad=False), (x,))
    sign, logabsdet = torch.linalg.slogdet(kernel)
    return -math.inf if sign == 0 else float(logabsdet)


def zico(model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: int = 2) -> float:
    """Sum over layers of log( sum over the layer's weights of mean|g| / std(g) ), g the cross-entropy gradient
    on each of ``splits`` equal parts of the batch.

    Layers whose gradients are large and consistent across batches train fast and well (Li et al.);
    the log per layer keeps one huge layer from dominating.
    """
    if not 2 <= splits <= len(x):
        raise OpmixError(f"splits={splits!r} must be at least 2 and at most the batch size ({len(x)})")
    state = _copy_state(model)
    per_split: dict[str, list[torch.Tensor]] = {}
    with _mode(model, True):
        for xs, ys in zip(torch.tensor_split(x, splits), torch.tensor_split(y, splits)):
            loss = F.cross_entropy(functional_call(model, state, (xs,)), ys)
            for n, g in _weight_grads(model, state, loss).items():
                per_split.setdefault(n, []).append(g.double())
    score = 0.0
    for grads in per_split.values():
        if len(grads) < splits:
            continue  # the weight is unused on some split: no spread to measure
        g = torch.stack(grads)
        mean_abs, std = g.abs().mean(0), g.std(0, correction=0)
        keep = std > 0
        total = float((mean_abs[keep] / std[keep]).sum())
        if total > 0:
            score += math.log(total)
    return score


def score_all(model_factory: Callable[[], nn.Module], data_batch: tuple[torch.Tensor, torch.Tensor], *,
              seed: int = 0, scores: Sequence[str] = SCORES, splits: int = 2) -> dict[str, float]:
    """Every score in ``scores`` of a fresh ``model_factory()`` built under ``torch.manual_seed(seed)``.

    A fresh model per score, so that one score's passes can never leak into the next, and each under the
    same seed, so the numbers are a function of (architecture, seed, batch) alone. Each score sets the
    train/eval mode its paper uses (see the module docstring).
    """
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise UnknownNameError(f"unknown zero-cost score(s) {unknown}; known: {', '.join(SCORES)}")
    x, y = data_batch
    compute = {
        "synflow": lambda m: synflow(m, (1, *x.shape[1:])),
        "snip": lambda m: snip(m, x, y),
        "naswot": lambda m: naswot(m, x),
        "zico": lambda m: zico(m, x, y, splits),
    }
    result = {}
    for name in scores:
        torch.manual_seed(seed)
        result[name] = compute[name](model_factory())
    return result
