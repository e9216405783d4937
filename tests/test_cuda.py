"""The CUDA paths: bfloat16 autocast and channels-last memory for every operator, and the proxy trainer on a GPU.

Skipped where no CUDA device is present (CI); run them on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import operators
from nas.network import build
from nas.space import load_space
from nas.train import TrainConfig, train_proxy
from tests.test_operators import CASES, IDS, _train_a_little
from tests.train_helpers import small_cnn, square_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_fp32():
    """TF32 off, so that fp32 on the GPU is compared with fp32 on the CPU at fp32 tolerances."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_channels_last_matches_fp32_cpu(name, kw, stride, exact_fp32):
    torch.manual_seed(0)
    op = operators.create_op(name, 32, 64, stride, **kw)
    _train_a_little(op, 32)
    op.eval()
    x = torch.randn(2, 32, 14, 15)
    with torch.no_grad():
        ref = op(x)
        gpu = op.cuda().to(memory_format=torch.channels_last)
        same = gpu(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(x.cuda().contiguous(memory_format=torch.channels_last))
    assert _rel_err(same.cpu(), ref) < 1e-4  # fp32 on the GPU: the same function
    assert _rel_err(half.cpu(), ref) < 3e-2  # bf16 keeps 8 bits of mantissa: about 0.4 % per rounding


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_bf16_backward_is_finite_and_points_the_same_way(name, kw, exact_fp32):
    """Gradients under bf16 autocast against fp32 ones, as one vector: some parameters' own gradients are zero in
    exact arithmetic (a bias before a training-mode BN, a position bias under softmax), so only noise is left of
    them in either precision, and comparing those one by one would compare rounding errors."""
    torch.manual_seed(0)
    op = operators.create_op(name, 16, 32, 2, **kw).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 15, 15, device="cuda").contiguous(memory_format=torch.channels_last)
    op(x).square().mean().backward()
    ref = torch.cat([p.grad.flatten() for p in op.parameters()])
    op.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = op(x).float().square().mean()
    loss.backward()
    for n, p in op.named_parameters():
        assert torch.isfinite(p.grad).all(), n
    half = torch.cat([p.grad.flatten() for p in op.parameters()])
    assert torch.nn.functional.cosine_similarity(half, ref, dim=0) > 0.98
    assert 0.8 < (half.norm() / ref.norm()).item() < 1.25


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_deploy_form_on_the_gpu(name, kw, exact_fp32):
    torch.manual_seed(0)
    op = operators.create_op(name, 32, 32, 1, **kw)
    _train_a_little(op, 32)
    op = op.cuda().eval()
    deploy = operators.reparameterize_model(op)
    x = torch.randn(2, 32, 16, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), op(x), rtol=1e-4, atol=1e-5)


def test_augmentation_on_cuda_equals_the_cpus_exactly():
    """The same generator seed gives the same crops and flips on the GPU as on the CPU, image for image (the
    trainer augments on the device the images lie on; only the draws come from the CPU generator)."""
    from nas.train import _augment, _batch

    x = torch.randn(64, 3, 32, 32)
    cpu = _augment(x, torch.Generator().manual_seed(5))
    gpu = _augment(x.cuda(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)

    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    idx = torch.randperm(100)[:64]
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, -1, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, -1, 1, 1)
    cpu = _batch(images, idx, mean, std, torch.Generator().manual_seed(5))
    gpu = _batch(images.cuda(), idx.cuda(), mean.cuda(), std.cuda(), torch.Generator().manual_seed(5),
                 channels_last=True)
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)  # the normalization's float rounding at most


def test_train_proxy_learns_on_cuda_like_on_cpu():
    data = square_task()
    cfg = TrainConfig(epochs=3, batch_size=32, max_train=None, augment=False)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = small_cnn()
        results[device] = train_proxy(model, data, dataclasses.replace(cfg, device=device))
        assert next(model.parameters()).device.type == device
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert results["cuda"].accuracies[-1] >= 0.9
    assert abs(results["cuda"].losses[-1] - results["cpu"].losses[-1]) < 0.1  # bf16 changes little


def test_a_sampled_proxy_trains_on_cuda():
    """A proxy from the default space, as the search builds it, for two epochs on the GPU."""
    import random

    data = square_task(n_train=256, n_val=128, size=28)
    arch = load_space("hybrid").random(random.Random(0))
    model = build(arch, width_mult=0.25, in_chans=1, num_classes=10, input_size=28)
    result = train_proxy(model, data, TrainConfig(epochs=2, batch_size=64, max_train=None))
    assert len(result.accuracies) == 2 and all(0 <= a <= 1 for a in result.accuracies)
    assert all(torch.isfinite(torch.tensor(result.losses)))
