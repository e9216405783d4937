"""Zero-cost scores on tiny networks whose score has a closed form written here, then on a real opmix proxy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nas.zero_cost import SCORES, naswot, score_all, snip, synflow, zico


def mlp(*widths: int, act: type[nn.Module] | None = None, bias: bool = False) -> nn.Sequential:
    """Linear layers of the given widths, with ``act`` between consecutive ones."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i and act:
            layers.append(act())
        layers.append(nn.Linear(a, b, bias=bias))
    return nn.Sequential(*layers)


def small_convnet(width: int = 8, classes: int = 5) -> nn.Sequential:
    """Conv-BN-ReLU twice, pool, linear: BN buffers to guard, ReLUs for naswot."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def batch(n: int = 8, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


# ---------------------------------------------------------------- synflow

def two_layer_synflow(w1: np.ndarray, w2: np.ndarray) -> float:
    """R = 1^T |W2| |W1| 1 = sum_kji |W2[k,j]| |W1[j,i]|. dR/d|W2[k,j]| = sum_i |W1[j,i]| and
    dR/d|W1[j,i]| = sum_k |W2[k,j]|, so each layer's sum |theta * dR/dtheta| is R itself: synflow = 2 R."""
    a1, a2 = np.abs(w1.astype(np.float64)), np.abs(w2.astype(np.float64))  # float64, as synflow
    r = sum(a2[k, j] * a1[j, i] for k in range(a2.shape[0]) for j in range(a2.shape[1]) for i in range(a1.shape[1]))
    return 2 * r


def test_synflow_of_a_two_layer_linear_net_is_twice_the_path_sum():
    net = mlp(4, 3, 2)
    expected = two_layer_synflow(net[0].weight.detach().numpy(), net[1].weight.detach().numpy())
    assert synflow(net, (1, 4)) == pytest.approx(expected, rel=1e-12)
    # a batch of b ones is b copies of the one-image sum; synflow is linear in it
    assert synflow(net, (3, 4)) == pytest.approx(3 * expected, rel=1e-12)


def test_synflow_sees_through_relu_and_default_batchnorm_and_bypasses_layernorm():
    torch.manual_seed(1)
    plain = mlp(5, 6, 3)
    expected = two_layer_synflow(plain[0].weight.detach().numpy(), plain[1].weight.detach().numpy())
    # all signals are positive, so a ReLU is the identity
    with_relu = nn.Sequential(plain[0], nn.ReLU(), plain[1])
    assert synflow(with_relu, (1, 5)) == pytest.approx(expected, rel=1e-12)
    # eval-mode BN with its initial statistics (mean 0, var 1) scales by 1 / sqrt(1 + eps), also in train mode
    with_bn = nn.Sequential(plain[0], nn.BatchNorm1d(6), plain[1]).train()
    assert synflow(with_bn, (1, 5)) == pytest.approx(expected / math.sqrt(1 + 1e-5), rel=1e-12)
    assert with_bn.training and with_bn[1].training  # the mode is restored
    # LayerNorm is bypassed: the score of the net without it
    with_ln = nn.Sequential(plain[0], nn.LayerNorm(6), plain[1])
    assert synflow(with_ln, (1, 5)) == pytest.approx(expected, rel=1e-12)


def test_synflow_counts_conv_and_linear_weights_only():
    # the bias of the last layer adds to R but has no weight of its own in the sum: with W1 = 1 (3x2) and
    # W2 = 1 (1x3), R = 6 + |b|; dR/dW2[j] = 2, dR/dW1[j,i] = 1 -> synflow = 3*2 + 6*1 = 12 for any bias
    net = mlp(2, 3, 1)
    net[1] = nn.Linear(3, 1)
    with torch.no_grad():
        net[0].weight.fill_(-1.0), net[1].weight.fill_(1.0), net[1].bias.fill_(-5.0)
    assert synflow(net, (1, 2)) == pytest.approx(12.0)


def test_synflow_survives_what_overflows_float32():
    # 40 layers of 64x64 ones: R = 64 ** 41 ~ 1e74 (float32 tops out at 3e38); synflow = 40 R
    net = mlp(*[64] * 41)
    for layer in net:
        nn.init.ones_(layer.weight)
    assert synflow(net, (1, 64)) == pytest.approx(40 * 64.0 ** 41, rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_a_wider_network_has_more_synaptic_flow(seed):
    torch.manual_seed(seed)
    narrow, wide = small_convnet(8), small_convnet(32)
    assert synflow(wide, (1, 3, 8, 8)) > 2 * synflow(narrow, (1, 3, 8, 8))


# ---------------------------------------------------------------- snip

def softmax_ce_grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dL/dW of L = mean_i CE(W x_i + b, y_i): (1/n) sum_i (softmax(W x_i + b) - onehot(y_i)) x_i^T."""
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p.T @ x / len(y)


def test_snip_of_a_linear_classifier_from_the_analytic_gradient():
    torch.manual_seed(2)
    net = nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    w, b = net.weight.detach().double().numpy(), net.bias.detach().double().numpy()
    g = softmax_ce_grad(w, b, x.double().numpy(), y.numpy())
    assert snip(net, x, y) == pytest.approx(float(np.abs(w * g).sum()), rel=1e-5)


def test_snip_is_zero_where_the_loss_cannot_move():
    # zero weights: theta * grad is 0 whatever the gradient
    net = nn.Linear(3, 2)
    nn.init.zeros_(net.weight)
    assert snip(net, torch.randn(4, 3), torch.tensor([0, 1, 0, 1])) == 0.0


# ---------------------------------------------------------------- naswot

def codes_net() -> nn.Module:
    """No weights: the ReLU's input is the image itself, so the test chooses the codes."""
    return nn.Sequential(nn.Flatten(), nn.ReLU())


def test_naswot_of_one_hot_codes_by_hand():
    # codes 100, 010, 001: N_A = 3, every Hamming distance 2 -> K_H = [[3,1,1],[1,3,1],[1,1,3]],
    # det = 3(9-1) - 1(3-1) + 1(1-3) = 20. A unit at exactly 0 is inactive (ReLU passes nothing).
    x = torch.tensor([[1.0, 0, -1], [0, 3, -1], [-1, 0, 0.5]])
    assert naswot(codes_net(), x) == pytest.approx(math.log(20), abs=1e-12)


def test_naswot_identical_codes_are_singular():
    x = torch.tensor([[1.0, -1, 2], [5.0, -3, 0.1], [-1, 1, 1]])  # rows 0 and 1 share the code 101
    assert naswot(codes_net(), x) == -math.inf


def test_naswot_sums_the_kernel_over_layers_and_is_n_a_minus_hamming():
    torch.manual_seed(3)
    x = torch.randn(6, 5)
    net = nn.Sequential(nn.ReLU(), nn.Linear(5, 7), nn.GELU())  # GELU: coded by the sign of its input
    pre = net[1](torch.relu(x)).detach()
    codes = torch.cat([x > 0, pre > 0], 1).numpy()
    n_a = codes.shape[1]
    k = np.array([[n_a - np.count_nonzero(ci != cj) for cj in codes] for ci in codes], dtype=float)
    sign, logdet = np.linalg.slogdet(k)
    assert sign > 0 and naswot(net, x) == pytest.approx(logdet, abs=1e-9)


def test_naswot_codes_batch_normalized_inputs_with_batch_statistics():
    # train mode, as Mellor et al.'s code: BN subtracts the batch mean, so unit j is active iff z_j > mean_j.
    # In eval mode (running mean 0) the code would be z > 0: all ones for this all-positive z, and singular.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    net = nn.Sequential(nn.Linear(1, 3, bias=False), nn.BatchNorm1d(3), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))  # z = x * (1, 2, 3): each unit active iff x > 2.5
    # codes 000, 000, 111, 111: K_H has two pairs of equal rows -> singular
    assert naswot(net, x) == -math.inf
    x = torch.tensor([[1.0], [4.0]])  # codes 000 and 111: K_H = [[3, 0], [0, 3]], det 9
    assert naswot(net, x) == pytest.approx(math.log(9), abs=1e-12)
    assert not net.training


def test_naswot_refuses_a_network_without_activations():
    with pytest.raises(ValueError, match="activation modules"):
        naswot(nn.Linear(3, 2), torch.randn(4, 3))


# ---------------------------------------------------------------- zico

def test_zico_of_a_linear_classifier_from_the_analytic_gradient():
    torch.manual_seed(4)
    net = nn.Linear(5, 3)
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    w, b = net.weight.detach().double().numpy(), net.bias.detach().double().numpy()
    xs, ys = x.double().numpy(), y.numpy()
    # two splits of 6: per weight mean |g| and population std over the two gradients; one layer -> one log
    g = np.stack([softmax_ce_grad(w, b, xs[:6], ys[:6]), softmax_ce_grad(w, b, xs[6:], ys[6:])])
    mean_abs, std = np.abs(g).mean(0), np.abs(g[0] - g[1]) / 2
    assert zico(net, x, y, splits=2) == pytest.approx(math.log((mean_abs / std).sum()), rel=1e-6)


def test_zico_adds_one_log_per_layer():
    # a 2-layer net is log(S1) + log(S2); duplicating the data into both halves makes std 0 everywhere -> 0
    torch.manual_seed(5)
    net = mlp(4, 6, 3, act=nn.ReLU, bias=True)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    assert zico(net, torch.cat([x, x]), torch.cat([y, y])) == 0.0
    assert math.isfinite(zico(net, torch.randn(10, 4), torch.randint(0, 3, (10,))))
    with pytest.raises(ValueError, match="splits"):
        zico(net, x, y, splits=1)


# ---------------------------------------------------------------- train mode, against plain autograd

def reference_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) of the Linear/Conv layers of a train-mode copy: batch statistics in BN."""
    import copy

    twin = copy.deepcopy(model).train()
    weights = [m.weight for m in twin.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    grads = torch.autograd.grad(nn.functional.cross_entropy(twin(x), y), weights)
    return [(w.detach().double(), g.double()) for w, g in zip(weights, grads)]


def test_snip_and_zico_use_batch_statistics():
    torch.manual_seed(6)
    model = small_convnet().eval()
    x, y = batch(8)
    expected = sum(float((w * g).abs().sum()) for w, g in reference_grads(model, x, y))
    assert snip(model, x, y) == pytest.approx(expected, rel=1e-5)
    halves = [reference_grads(model, x[:4], y[:4]), reference_grads(model, x[4:], y[4:])]
    expected = 0.0
    for (_, g1), (_, g2) in zip(*halves):
        mean_abs, std = (g1.abs() + g2.abs()) / 2, (g1 - g2).abs() / 2
        expected += math.log(float((mean_abs[std > 0] / std[std > 0]).sum()))
    assert zico(model, x, y) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- all scores: no side effects, seeds

def run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return {"synflow": lambda: synflow(model, (1, *x.shape[1:])), "snip": lambda: snip(model, x, y),
            "naswot": lambda: naswot(model, x), "zico": lambda: zico(model, x, y)}[name]()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor], training: list[bool]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k  # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == training


@pytest.mark.parametrize("name", SCORES)
@pytest.mark.parametrize("train", [True, False])
def test_scores_leave_the_model_as_it_was(name, train):
    model = small_convnet().train(train)
    model[1].eval()  # a mixed-mode model: each module's flag comes back, not just the top one
    before, training = snapshot(model), [m.training for m in model.modules()]
    x, y = batch()
    assert math.isfinite(run(name, model, x, y))
    assert_unchanged(model, before, training)


@pytest.mark.parametrize("name", SCORES)
def test_scores_are_deterministic_under_a_seed_and_depend_on_it(name):
    x, y = batch()
    first = score_all(small_convnet, (x, y), seed=7, scores=[name])
    assert score_all(small_convnet, (x, y), seed=7, scores=[name]) == first
    assert score_all(small_convnet, (x, y), seed=8, scores=[name]) != first  # the seed reaches the init


def test_score_all_builds_a_fresh_model_per_score():
    built = []

    def factory() -> nn.Module:
        built.append(small_convnet())
        return built[-1]

    x, y = batch()
    scores = score_all(factory, (x, y), seed=3)
    assert list(scores) == list(SCORES) and len(built) == len(SCORES)
    # every model came from the same seed: the same weights, and each score equals the function on its own
    assert all(torch.equal(m[0].weight, built[0][0].weight) for m in built)
    torch.manual_seed(3)
    assert scores["snip"] == snip(small_convnet(), x, y)
    with pytest.raises(KeyError, match="known: synflow"):
        score_all(factory, (x, y), scores=["grasp"])


def test_scores_of_a_real_opmix_proxy_are_finite_and_leave_it_unchanged():
    from nas.network import build
    from nas.space import load_reference

    net = build(load_reference("resnet50"), width_mult=0.25, in_chans=1, num_classes=10, input_size=28)
    before, training = snapshot(net), [m.training for m in net.modules()]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    scores = {name: run(name, net, x, y) for name in SCORES}
    assert all(math.isfinite(v) for v in scores.values()), scores
    assert scores["synflow"] > 0 and scores["snip"] > 0
    assert_unchanged(net, before, training)
