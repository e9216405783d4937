"""Evolving attention: the evolution step against a loop reference (logits mixed, not probabilities; the
evolved logits handed on, not the raw ones; the conv over the N x N map with heads as channels), the chain
through blocks, stages and the network (continued where the shapes match, restarted where they differ, ended by
a block that does not take it), the official layout and init, the counts the issue names (584 parameters and
22.1 M multiply-adds an EA layer at N = 196), and the chain carried by the exported code and ONNX program."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from op_helpers import randomize
from torch import nn

import operators
from nas.flops import flop_analysis
from nas.network import OpmixNet, Stage, stage_layers
from operators._layers import Chain
from operators.evolving_attention import EvolvingAugmentedConv, EvolvingBottleneck, evolving_attention


def _naive_evolution(conv: nn.Conv2d, logits: torch.Tensor, prev: torch.Tensor | None, alpha: float,
                     beta: float) -> torch.Tensor:
    """A = alpha ReLU(conv(A_in)) + (1 - alpha) A_in, A_in = (1 - beta) L + beta A_prev, the 3x3 conv written
    as loops over the (query, key) cells of the N x N map, heads as channels, zero outside the map."""
    a_in = logits.double() if prev is None else ((1 - beta) * logits + beta * prev).double()
    b, heads, n, _ = a_in.shape
    w, bias = conv.weight.double(), conv.bias.double()
    out = torch.zeros_like(a_in)
    for s in range(b):
        for o in range(heads):
            for i in range(n):
                for j in range(n):
                    acc = float(bias[o])
                    for c in range(heads):
                        for di in range(3):
                            for dj in range(3):
                                ii, jj = i + di - 1, j + dj - 1
                                if 0 <= ii < n and 0 <= jj < n:
                                    acc += float(w[o, c, di, dj]) * float(a_in[s, c, ii, jj])
                    out[s, o, i, j] = max(acc, 0.0)
    return (alpha * out + (1 - alpha) * a_in).float()


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.5), (0.3, 0.8)])
def test_the_evolution_step_matches_a_loop_reference(alpha, beta):
    torch.manual_seed(0)
    mixer = EvolvingAugmentedConv(16, heads=2, alpha=alpha, beta=beta)
    randomize(mixer)
    logits, prev = torch.randn(2, 2, 6, 6), torch.randn(2, 2, 6, 6)
    chain = Chain()
    chain.value = prev
    with torch.no_grad():
        got = mixer.evolved(logits, chain)
        torch.testing.assert_close(got, _naive_evolution(mixer.evolve, logits, prev, alpha, beta), rtol=1e-5,
                                   atol=1e-5)
        assert chain.value is got  # the evolved logits go on, not the raw ones
        # at a chain's start (no previous logits, or another shape) the block's own logits stand in
        for start in (None, torch.randn(2, 2, 5, 5)):
            fresh = Chain()
            fresh.value = start
            torch.testing.assert_close(mixer.evolved(logits, fresh),
                                       _naive_evolution(mixer.evolve, logits, None, alpha, beta), rtol=1e-5,
                                       atol=1e-5)


def test_what_is_mixed_is_logits_and_what_attends_is_their_softmax():
    """A block fed the previous block's evolved logits attends with softmax(A), where A comes from the mix of
    logits: the same previous logits shifted by a constant per query row give the same attention only if
    logits, not probabilities, were mixed (softmax ignores the shift, a mix of probabilities would not)."""
    torch.manual_seed(1)
    mixer = EvolvingAugmentedConv(16, heads=2, alpha=0.0, beta=0.5).eval()  # alpha 0: A = A_in, no conv
    randomize(mixer)
    x, prev = torch.randn(1, 16, 4, 4), torch.randn(1, 2, 16, 16)
    outs = []
    for shift in (0.0, 7.0):
        chain = Chain()
        chain.value = prev + shift
        with torch.no_grad():
            outs.append(mixer(x, chain))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    chain = Chain()
    with torch.no_grad():
        assert not torch.allclose(mixer(x, chain), outs[0], atol=1e-3)  # the previous logits do matter


def _spy(mixer: EvolvingAugmentedConv, seen: list) -> None:
    """Record the shape of the logits each call of ``mixer.evolved`` receives through its chain (None: none)."""
    original = mixer.evolved

    def evolved(logits, chain):
        seen.append(None if chain is None or chain.value is None else tuple(chain.value.shape))
        return original(logits, chain)

    mixer.evolved = evolved


def _chained(blocks, x):
    chain = Chain()
    for block in blocks:
        x = block(x, chain) if getattr(block, "takes_chain", False) else block(x)
    return x, chain


def test_a_stage_and_the_network_pass_the_chain_across_the_stage_boundary():
    torch.manual_seed(2)
    # stage 1 attends at 4 x 4 (8 x 8 maps, pool=True), stage 2 at 4 x 4 after its stride: N = 16 in both, so
    # the chain crosses; stage 3's stride gives N = 4: a new chain
    first = stage_layers(evolving_attention, 16, 32, 2, 1, pool=True, heads=2)
    second = stage_layers(evolving_attention, 32, 64, 2, 2, heads=2)
    third = stage_layers(evolving_attention, 64, 64, 1, 2, heads=2)
    net = OpmixNet(nn.Conv2d(3, 16, 3, padding=1), [nn.Sequential(*first), nn.Sequential(*second),
                                                   nn.Sequential(*third)], nn.Identity())
    randomize(net)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    seen = []
    for block in [*first, *second, *third]:
        _spy(block.mixer, seen)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert seen == [None, (2, 2, 16, 16), (2, 2, 16, 16), (2, 2, 16, 16), (2, 2, 16, 16)]
        want, _ = _chained([*first, *second, *third], net.stem(x))
    torch.testing.assert_close(feats, want)
    with torch.no_grad():  # stages run on their own start their own chains: another result
        apart = third[0](second[1](second[0](first[1](first[0](net.stem(x))))))
    assert not torch.allclose(apart, feats, atol=1e-4)


def test_a_block_that_does_not_take_the_chain_ends_it():
    torch.manual_seed(3)
    stage = Stage(evolving_attention(16, 16, heads=2), operators.create_op("resnet_basic", 16, 16),
                  evolving_attention(16, 16, heads=2))
    randomize(stage)
    stage.eval()
    got = []
    _spy(stage[2].mixer, got)
    with torch.no_grad():
        stage(torch.randn(1, 16, 4, 4))
    assert got == [None]


def test_the_official_layout_widths_and_init():
    block = evolving_attention(512, 1024, stride=2)  # conv4's first block: F = 256
    mixer = block.mixer
    assert isinstance(block, EvolvingBottleneck) and block.takes_chain
    assert (mixer.heads, mixer.dk, mixer.dv) == (8, 64, 32)  # d_k = F / 4, d_v = F / 8
    assert mixer.conv.out_channels == 256 - 32 and mixer.conv.bias is None
    assert mixer.kqv.out_channels == 2 * 64 + 32 and mixer.kqv.bias is not None and mixer.proj.bias is not None
    assert isinstance(mixer.pool, nn.AvgPool2d) and mixer.pool.kernel_size == 3 and mixer.shrink is None
    assert evolving_attention(256, 512, 2, pool=True).mixer.shrink is not None
    assert all(m.init_scheme == "lecun_normal" for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert torch.equal(block.expand.bn.weight, torch.ones(1024))  # no zero-initialized last BN
    # the relative embeddings: tf.random_normal_initializer(d_kh ** -0.5), whose first argument is the mean
    torch.manual_seed(0)
    tables = torch.cat([EvolvingAugmentedConv(256).rel.rel_h.flatten() for _ in range(8)]).double()
    n = tables.numel()
    assert abs(tables.mean().item() - 8 ** -0.5) < 5 / math.sqrt(n) and abs(tables.std().item() - 1) < 5 / math.sqrt(n)


def test_an_ea_layer_has_584_parameters_and_22_m_multiply_adds_at_n_196():
    mixer = EvolvingAugmentedConv(256)  # 8 heads
    assert sum(p.numel() for p in mixer.evolve.parameters()) == 8 * 8 * 9 + 8 == 584
    by_module = flop_analysis(mixer.eval(), (torch.zeros(1, 256, 14, 14),)).by_module()
    assert by_module["evolve"] == 196 * 196 * 8 * 8 * 9 == 22_127_616
    # with pool=True the attention of a 28 x 28 map runs at 14 x 14, resized back: 4 multiply-adds an output
    pooled = EvolvingAugmentedConv(128, pool=True).eval()
    counts = flop_analysis(pooled, (torch.zeros(1, 128, 28, 28),)).by_module()
    assert counts["evolve"] == 22_127_616
    assert pooled.dv == 16
    ops = flop_analysis(pooled, (torch.zeros(1, 128, 28, 28),)).by_operator()
    assert ops["upsample_bilinear2d"] == 4 * 16 * 28 * 28


def test_an_operator_keyword_may_share_a_builder_arguments_name():
    seen = {}

    def block(in_chs, out_chs, stride=1, depth=0, downsample="no", alternate=None):
        seen.setdefault("kw", []).append((depth, downsample, alternate))
        return nn.Conv2d(in_chs, out_chs, 1, stride)

    layers = stage_layers(block, 4, 8, 2, 1, (), None, depth=7, downsample="yes", alternate="x")
    assert len(layers) == 2 and seen["kw"] == [(7, "yes", "x")] * 2


CHAINED_ARCH = {  # 32 px: the small-image stem (stride 2) gives 16 x 16; stage 1 attends at 4 x 4 (stride 2,
    # then pool), stage 2 at 4 x 4 after its stride: N = 16 in both, so the chain crosses the stage boundary
    "input": {"channels": 3, "size": 32, "classes": 5}, "stem": {"type": "conv7_pool", "width": 16},
    "stages": [{"op": "evolving_attention", "width": 64, "depth": 2, "stride": 2, "params": {"pool": True}},
               {"op": "evolving_attention", "width": 128, "depth": 1, "stride": 2}],
    "head": {"type": "pool_linear"}}


def _broken_chain(net: OpmixNet, x: torch.Tensor) -> torch.Tensor:
    """The network with every block starting its own chain."""
    x = net.stem(x)
    for stage in net.stages:
        for block in stage:
            x = block(x)
    return net.head(x)


def test_the_exported_code_carries_the_chain():
    import types

    from nas._codegen import standalone_source
    from nas.arch import Arch
    from nas.network import build

    arch = Arch.from_dict(CHAINED_ARCH)
    module = types.ModuleType("exported")
    exec(compile(standalone_source(arch, "test"), "model.py", "exec"), module.__dict__)
    torch.manual_seed(0)
    net = build(arch).eval()
    randomize(net)
    mine = module.build().eval()
    mine.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), net(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(module.reparameterize_model(mine)(x), net(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(_broken_chain(net, x), net(x), atol=1e-4)  # the chain is there to carry


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_the_onnx_program_carries_the_chain(tmp_path):
    from nas.arch import Arch
    from nas.export import _onnx_export, _onnx_run
    from nas.network import build

    torch.manual_seed(0)
    net = build(Arch.from_dict(CHAINED_ARCH)).eval()
    randomize(net)
    deploy = operators.reparameterize_model(net)
    x = torch.randn(2, 3, 32, 32)
    _onnx_export(deploy, x, tmp_path / "model.onnx", dynamic=True)
    with torch.no_grad():
        want, broken = net(x), _broken_chain(net, x)
    got = _onnx_run(tmp_path / "model.onnx", x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, broken, atol=1e-3)


def test_the_docs_plug_in_example_chains(monkeypatch):
    """docs/operators.md's chained plug-in, run as written (its registration caught, so the catalog stays as
    it is for the other tests): its second block mixes in the first block's output."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "operators.md").read_text()
    code = re.search(r"A plug-in operator that smooths.*?```python\n(.*?)```", text, re.S).group(1)
    registered = {}
    monkeypatch.setattr(operators, "register_op", lambda name, factory, **kw: registered.setdefault(name, factory))
    namespace: dict = {}
    exec(compile(code, "operators.md", "exec"), namespace)
    smoothed = registered["smoothed"]
    torch.manual_seed(0)
    first, second = smoothed(3, 4), smoothed(4, 4)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        got = Stage(first, second)(x)
        y1 = first.conv(x)
        torch.testing.assert_close(got, 0.5 * second.conv(y1) + 0.5 * y1)
