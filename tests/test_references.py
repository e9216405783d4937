"""Published architectures: built from their YAML, counted, and compared with the papers and stored counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.flops import count_flops, count_params, measure_arch
from nas.network import build_uninitialized
from nas.space import list_references, load_reference

STORED = json.loads((Path(__file__).parent / "data" / "reference_counts.json").read_text())

# name: (params, FLOPs = multiply-adds at 224 px, relative tolerance), from the papers (OPERATORS.md)
PUBLISHED = {
    "resnet50": (25.6e6, 4.1e9, 0.03),
    "swin_t": (28.3e6, 4.5e9, 0.03),
    "convnext_t": (28.6e6, 4.5e9, 0.03),
    "coatnet_0": (25e6, 4.2e9, 0.03),
    # BoT-S1-50's published 4.27 G cannot hold for ResNet-50 with c5 at stride 16 (14x14): its 1x1 convs
    # alone cost 1.5 G there, against 0.46 G at 7x7. We build the paper's architecture and check its
    # params; its FLOPs are checked against the stored count only (5.41 G; see the issue notes).
    "bot_s1_50": (20.8e6, None, 0.06),
    "repvgg_a2": (25.5e6, 5.1e9, 0.06),
    "acmix_resnet50": (18.6e6, 3.6e9, 0.06),
    "acmix_swin_t": (30e6, 4.6e9, 0.06),
    # LeViT-384 without its distillation head (0.77 M): 6 % as the issue allows for LeViT
    "levit_384": (39e6, 2.35e9, 0.06),
    "nat_t": (28e6, 4.3e9, 0.05),
    "maxvit_t": (31e6, 5.6e9, 0.05),
    # CvT-13 without its stage-3 class token (384 params, 19.6 M multiply-adds)
    "cvt_13": (20e6, 4.5e9, 0.05),
    "mvitv2_t": (24e6, 4.7e9, 0.05),
    "uniformer_s": (22e6, 3.6e9, 0.05),
    "hornet_t": (22e6, 4.0e9, 0.05),
    # MixFormer-B4 within 8 % as the issue allows; its head's per-pixel 1280-wide projection is approximated by
    # a pre-logits layer of the same width (31.5 M multiply-adds fewer)
    "mixformer_b4": (35e6, 3.6e9, 0.08),
    "glnet_4g": (27e6, 4.5e9, 0.05),
    # EfficientViT-B3 less what its head has over pool_linear with a 2560-wide pre-logits layer: the 1x1 conv
    # 512 -> 2304 + BN on the 7x7 map and Linear 2304 -> 2560 + LN instead of Linear 512 -> 2560, 5.77 M params
    # and 62 M multiply-adds (docs/spaces.md, note 6); the backbone is the official one to the parameter
    "efficientvit_b3": (49e6 - 5.77e6, 4.0e9 - 0.062e9, 0.03),
    # AA-ResNet-50 (Bello et al.): 25.8 M, 8.3 G at 2 FLOPs a multiply-add. Our count is 24.93 M (-3.4 %): the
    # augmented 3x3s of conv3-conv5 (kappa 0.2, upsilon 0.1, 8 heads) are 0.60 M lighter than ResNet-50's 3x3s,
    # while the paper's 25.8 M is 0.2 M heavier; the multiply-adds agree (4.15 G). docs/spaces.md, note 8.
    "aa_resnet50": (25.8e6, 8.3e9 / 2, 0.05),
    # EA-AA-ResNet-50 (Wang et al.): no published count; the paper's network adds 584-parameter evolution convs
    # to an AA-ResNet-50 with d_k = F / 4 and d_v = F / 8, so it is held to AA-ResNet-50's published figures at
    # the same 5 %; its multiply-adds against the per-layer count in test_evolving_attention (22.1 M at N = 196).
    "ea_aa_resnet50": (25.8e6, None, 0.05),
    # DY-MobileNetV2 x1.0 less what its last layer, a 1x1 conv 320 -> 1280 + BN on the 7x7 map, has over
    # pool_linear's 1280-wide pre-logits layer: 19.66 M multiply-adds (the params differ by 1,280; note 7)
    "dy_mobilenetv2_100": (11.1e6, 312.9e6 - 19.66e6, 0.02),
    # DY-ResNet-18's published 42.7 M cannot hold with every conv but the stem dynamic (4 x ResNet-18's non-stem
    # conv weights are 44.6 M alone): its params are checked against our count, 45.47 M, which ODConv's count of
    # DyConv's ResNet-18 agrees with (about 45.5 M); its FLOPs against the paper's 1.85 G (note 7)
    "dy_resnet18": (45.47e6, 1.85e9, 0.01),
}


def test_every_reference_has_published_and_stored_figures():
    assert sorted(PUBLISHED) == list_references() == sorted(STORED)


@pytest.fixture(scope="module")
def counts():
    """The deploy form counted as the search counts a candidate (``measure_arch``, layer by layer), the training
    form's parameters on the whole network; the stored numbers were counted on whole networks
    (make_reference_counts.py), so the deploy rows also hold the layer-wise count to the whole network's on every
    reference. The training form's FLOPs trace every whole network again (half this fixture's time): the
    ``slow`` test below checks them."""
    out = {}
    for name in list_references():
        arch = load_reference(name)
        flops, params = measure_arch(arch)
        out[name] = {"flops": flops, "params": params,
                     "train_params": count_params(build_uninitialized(arch), deploy=False)}
    return out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reference_matches_the_paper(name, counts):
    params, flops, tol = PUBLISHED[name]
    assert counts[name]["params"] == pytest.approx(params, rel=tol)
    if flops is not None:
        assert counts[name]["flops"] == pytest.approx(flops, rel=tol)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reference_matches_stored_counts_exactly(name, counts):
    stored = {k: v for k, v in STORED[name].items() if k != "train_flops"}
    assert counts[name] == stored, "regenerate with python tests/data/make_reference_counts.py and review"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reference_training_form_flops_match_the_stored_count(name):
    net = build_uninitialized(load_reference(name))
    assert count_flops(net, deploy=False) == STORED[name]["train_flops"], \
        "regenerate with python tests/data/make_reference_counts.py and review"


def test_repvgg_deploy_form_is_what_the_paper_counts():
    # RepVGG's published 25.5 M / 5.1 G are the deploy form; training adds the 1x1 and identity branches
    assert STORED["repvgg_a2"]["train_params"] > STORED["repvgg_a2"]["params"]
    assert STORED["repvgg_a2"]["train_flops"] > STORED["repvgg_a2"]["flops"]
