"""QnA (operators/qna.py): learned queries shared by all windows, against a naive loop reference.

The detail most often got wrong is taking the queries from the input (a self-attention in disguise): here the
queries are parameters, a pixel's own projection enters its window only as a key and a value, and a window
attends only to the in-map pixels of its k x k neighbourhood (never to zero padding).
"""

from __future__ import annotations

import math

import pytest
import torch

import operators
from operators.qna import QnAttention


def _attention(in_dim=8, out_dim=8, heads=2, queries=2, window=3, stride=1, seed=0) -> QnAttention:
    """A QnA mixer in float64 with every parameter off its init (the bias starts at 0, the mixing weights
    near 0), so that each term of the formula shows in the output."""
    torch.manual_seed(seed)
    att = QnAttention(in_dim, out_dim, heads, queries, window, stride).double()
    with torch.no_grad():
        att.rel_bias.normal_(0.0, 1.0)
        att.mix.normal_(1.0, 0.5)
        att.query.normal_()
        for conv in (att.to_k, att.to_v, att.proj):
            conv.weight.normal_(0.0, 0.5)
    return att


def naive_qna(att: QnAttention, x: torch.Tensor) -> torch.Tensor:
    """The paper's formula, pixel by pixel: for each output pixel (centre c = stride x its index), the window's
    in-map keys k_j, logits q_hat . k_j / sqrt(d) + b(j - c) per learned query and head, a softmax over those
    keys, the values weighted by softmax x a(j - c), summed over the queries, then the output projection."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a thousand tiny ops: a thread pool adds only synchronisation (50x on a busy host)
    try:
        return _naive_qna(att, x)
    finally:
        torch.set_num_threads(threads)


def _naive_qna(att: QnAttention, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    nq, heads, d, k, s = att.queries, att.heads, att.head_dim, att.window, att.stride
    p = k // 2
    q = att.query.view(nq, heads, d)
    q = q / (q.norm(dim=-1, keepdim=True) + 1e-6) / math.sqrt(d)  # the official normalize_q, depth scale
    keys = torch.einsum("oc,bchw->bohw", att.to_k.weight[:, :, 0, 0], x).view(b, heads, d, h, w)
    vals = torch.einsum("oc,bchw->bohw", att.to_v.weight[:, :, 0, 0], x).view(b, heads, d, h, w)
    bias, mix = att.rel_bias.view(nq, heads, k * k), att.mix.view(nq, heads, k * k)
    ho, wo = math.ceil(h / s), math.ceil(w / s)
    out = torch.zeros(b, heads, d, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            cy, cx = i * s, j * s
            cells = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)
                     if 0 <= cy + dy < h and 0 <= cx + dx < w]  # the in-map keys only
            ys = torch.tensor([cy + dy for dy, _ in cells])
            xs = torch.tensor([cx + dx for _, dx in cells])
            cell = torch.tensor([(dy + p) * k + dx + p for dy, dx in cells])  # row-major k x k table index
            kj, vj = keys[..., ys, xs], vals[..., ys, xs]  # (b, heads, d, n)
            logits = torch.einsum("qhd,bhdn->bqhn", q, kj) + bias[..., cell]
            weights = logits.softmax(-1) * mix[..., cell]
            out[..., i, j] = torch.einsum("bqhn,bhdn->bhd", weights, vj)
    return torch.einsum("oc,bchw->bohw", att.proj.weight[:, :, 0, 0], out.reshape(b, heads * d, ho, wo))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("window", [3, 5])
def test_fast_path_matches_the_naive_loop(window, stride):
    att = _attention(window=window, stride=stride)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        want = naive_qna(att, x)
        got = att(x)
        assert got.shape == (2, 8, math.ceil(9 / stride), math.ceil(11 / stride))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        att.reparameterize()  # the deploy form: fused logit kernel, stored window kernels
        torch.testing.assert_close(att(x), want, rtol=1e-10, atol=1e-10)


def test_window_larger_than_the_map_attends_only_to_the_map():
    """A 1x1 map: the window's one in-map key gets softmax weight 1, so out = proj(sum_q a_q(centre) v).
    Zero-padded keys let in (logit = bias only) would take weight from it."""
    att = _attention(window=5)
    x = torch.randn(3, 8, 1, 1, dtype=torch.float64)
    centre = att.mix.view(2, 2, 5, 5)[:, :, 2, 2].sum(0)  # (heads,) summed over the queries
    v = att.to_v(x).view(3, 2, 4)
    want = att.proj((v * centre[None, :, None]).reshape(3, 8, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(att(x), want, rtol=1e-12, atol=1e-12)


def test_queries_are_parameters_not_projections_of_the_input():
    att = _attention()
    assert isinstance(att.query, torch.nn.Parameter) and att.query.shape == (2, 8)  # (queries, width)
    before = att.query.detach().clone()
    x = torch.randn(1, 8, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        att(x), att(3 * x + 1)
    torch.testing.assert_close(att.query, before, rtol=0, atol=0)
    # The logit of a pixel depends on that pixel alone (a 1x1 conv: q_hat . W_k x_j): change one pixel and only
    # its logits move. A self-attention query taken from the centre would move the logits of its whole window.
    y = x.clone()
    y[..., 4, 5] += 1.0
    with torch.no_grad():
        diff = (att.logits(y) - att.logits(x)).abs().sum(dim=(0, 1))
    assert diff[4, 5] > 0
    diff[4, 5] = 0
    assert diff.max() == 0


def test_a_windows_weights_ignore_its_centre_except_as_a_key():
    """Move the centre pixel's input along a direction that leaves its key's logits unchanged (the null space of
    the fused q_hat W_k kernel, 4 x 8 here): every window's weights stay as they were, so the output moves
    linearly (only the centre's value changed). Were the query a projection of the centre, the centre's window
    would reweight its keys and the change would not be linear. A direction that moves the logits is not linear."""
    att = _attention(queries=2, heads=2)
    x = torch.randn(1, 8, 9, 11, dtype=torch.float64)
    kernel = att.fused()[0][:, :, 0, 0].detach()  # (queries x heads, in) = (4, 8)
    null = torch.linalg.svd(kernel).Vh[-1]
    assert kernel @ null == pytest.approx(torch.zeros(4), abs=1e-12)

    def change(direction: torch.Tensor, scale: float) -> torch.Tensor:
        y = x.clone()
        y[0, :, 4, 5] += scale * direction
        with torch.no_grad():
            return att(y) - att(x)

    torch.testing.assert_close(change(null, 2.0), 2 * change(null, 1.0), rtol=1e-9, atol=1e-12)
    moving = torch.randn(8, dtype=torch.float64)
    assert not torch.allclose(change(moving, 2.0), 2 * change(moving, 1.0), rtol=1e-3, atol=1e-6)


def test_windows_are_local_and_keys_reach_their_neighbours():
    att = _attention(window=3)
    x = torch.randn(1, 8, 9, 11, dtype=torch.float64)
    y = x.clone()
    y[..., 4, 5] += 1.0
    with torch.no_grad():
        moved = (att(y) - att(x)).abs().sum(dim=(0, 1)) > 0
    want = torch.zeros(9, 11, dtype=torch.bool)
    want[3:6, 4:7] = True  # the 3x3 windows that contain pixel (4, 5)
    assert torch.equal(moved, want)


def test_large_logits_stay_finite_and_exact():
    """Inputs whose logits all sit near +-200 (exp overflows float32 beyond 88): the per-map maximum shift keeps
    the ratio exact. Compared in float32 with the float64 loop."""
    att = _attention()
    base = torch.randn(8, dtype=torch.float64)
    x = base[None, :, None, None] * 1e3 + 0.05 * torch.randn(1, 8, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        assert att.logits(x).abs().min() > 50
        want = naive_qna(att, x)
        got = att.float()(x.float())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3 * want.abs().max().item())


def test_block_structure_and_init():
    """The official block: LN(eps 1e-6) -> QnA -> + shortcut, LN -> MLP(4x, tanh GELU) -> +; 1x1 stride-2 conv on
    the shortcut of the downsampling block; head dim 8; LeCun normal weights; bias 0; mixing N(0, 0.02^2);
    queries trunc normal with std 1 / sqrt(head_dim) (before truncation)."""
    torch.manual_seed(0)
    block = operators.create_op("qna", 64, 128, 2)
    assert block.attn.heads == 16 and block.attn.head_dim == 8 and block.attn.window == 3
    assert block.attn.queries == 2
    assert block.norm1.eps == block.norm2.eps == 1e-6
    assert block.mlp.fc1.out_features == 512 and block.mlp.act.approximate == "tanh"
    assert block.shortcut.stride == (2, 2) and block.shortcut.bias is None
    assert operators.create_op("qna", 64, 64, 1).shortcut.__class__.__name__ == "Identity"
    assert torch.equal(block.attn.rel_bias, torch.zeros_like(block.attn.rel_bias))
    assert abs(block.attn.mix.std().item() - 0.02) < 0.002
    q = block.attn.query * math.sqrt(8)  # N(0, 1) truncated to [-2, 2]
    assert q.abs().max() <= 2 and abs(q.std().item() - 0.8796) < 0.05
    w = block.attn.to_v.weight * math.sqrt(64)  # fan_in 64: unit variance, truncated at 2 / 0.8796
    assert abs(w.std().item() - 1) < 0.03 and w.abs().max() <= 2 / 0.87962566 + 1e-6
    assert block.mlp.fc1.bias.abs().max() == 0 and block.attn.proj.bias is None


def test_costs_of_one_block_at_56x56x64():
    """Multiply-adds by formula (HW = 3136, C = 64, 8 heads, 2 queries, k = 3): logits 16 C HW (the fused
    q_hat W_k), values and output C^2 HW each, the window sums 2 C 9 HW and 16 x 9 HW, MLP 8 C^2 HW, and the two
    LayerNorms 5 C HW each (fvcore's count); the training form adds the q_hat W_k product, about 2 C^2 (as
    fvcore's einsum path counts it)."""
    from nas.flops import count_flops

    hw, c = 56 * 56, 64
    block = operators.create_op("qna", c, c, 1)
    want = hw * (16 * c + 2 * c * c + 2 * c * 9 + 16 * 9 + 8 * c * c + 2 * 5 * c)
    assert count_flops(block, (1, c, 56, 56)) == want
    assert 0 < count_flops(block, (1, c, 56, 56), deploy=False) - want <= 2 * c * c


@pytest.mark.parametrize("bad", [{"window": 4}, {"window": 0}, {"queries": 0}, {"heads": 3}, {"head_dim": 0}])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="qna: "):
        operators.create_op("qna", 64, 64, **bad)


def test_deploy_form_drops_the_queries_and_the_key_projection():
    torch.manual_seed(0)
    block = operators.create_op("qna", 16, 32, 2).eval()
    deploy = operators.reparameterize_model(block)
    names = {n for n, _ in deploy.named_parameters()}
    assert "attn.query" not in names and "attn.to_k.weight" not in names and "attn.logit_kernel" in names
    assert deploy.attn.logit_kernel.shape == (8, 16, 1, 1)  # (queries x heads, in, 1, 1)
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), block(x), rtol=1e-5, atol=1e-6)
