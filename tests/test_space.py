"""The space language: loading, validation errors with key paths, Arch round trips, sampling, the CLIs."""

from __future__ import annotations

import random
import textwrap

import optuna
import pytest

from nas.space import (Arch, SpaceError, dump_arch, list_references, load_arch, load_reference, load_space)

MINI = """
name: mini
input: {channels: 3, size: 64, classes: 10}
stem: {type: patch4, width: [16, 32]}
stages:
- output_stride: 4
  ops:
  - resnet_basic
  - {op: swin, window: [4, 7], heads: [1, 2]}
  width: [32, 64]
  depth: {min: 1, max: 2}
- output_stride: 8
  ops:
  - {op: mbconv, expansion: [2, 4]}
  - transformer
  width: {min: 64, max: 128, step: 64}
  depth: 1
head: {type: pool_linear}
constraints: {widths_non_decreasing: true}
"""


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_space_loads_by_name_and_by_path():
    space = load_space("hybrid")
    assert [s.output_stride for s in space.stages] == [4, 8, 16, 32]
    assert load_space(space.source) == space
    global_ops = {"transformer", "bot", "attention_augmented"}
    for i, stage in enumerate(space.stages):
        names = {o.name for o in stage.ops}
        assert {"swin", "acmix", "xvolution", "resnet_bottleneck", "convnext"} <= names
        assert bool(names & global_ops) == (i >= 2), "global attention only in stages 3 and 4"


def test_size_counts_every_combination(tmp_path):
    space = load_space(write(tmp_path, MINI))
    stage1 = 2 * 2 * (1 + 2 * 2)  # widths x depths x (resnet_basic + swin's window x heads)
    stage2 = 2 * 1 * (2 + 1)  # widths x depth x (mbconv's expansions + transformer)
    assert space.size() == 2 * stage1 * stage2  # x stem widths


@pytest.mark.parametrize("edit,key,allowed", [
    (("depth: {min: 1, max: 2}", "depht: {min: 1, max: 2}"), "stages[0].depht", "depth"),
    (("- resnet_basic", "- resnet_basik"), "stages[0].ops[0].op", "resnet_bottleneck"),
    (("depth: 1", "depth: 0"), "stages[1].depth", "integer >= 1"),
    (("width: [32, 64]", "width: []"), "stages[0].width", "one value or more"),
    (("heads: [1, 2]", "heads: [1, 5]"), "stages[0].ops[1].heads", "divisor"),
    (("window: [4, 7]", "windw: [4, 7]"), "stages[0].ops[1].windw", "window"),
    (("output_stride: 8", "output_stride: 16"), "stages[1].output_stride", "4 or 8"),
    (("type: patch4", "type: patch16"), "stem.type", "conv7_pool"),
    (("widths_non_decreasing: true", "widths_non_decreasing: yes please"), "constraints.widths_non_decreasing",
     "true or false"),
    (("depth: {min: 1, max: 2}", "depth: {min: 3, max: 2}"), "stages[0].depth", "min <= max"),
])
def test_bad_space_names_file_key_and_what_is_allowed(tmp_path, edit, key, allowed):
    path = write(tmp_path, MINI.replace(*edit))
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message and key in message and allowed in message, message
    assert "\n" not in message


def test_yaml_is_read_safely(tmp_path):
    path = write(tmp_path, "!!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_unknown_space_name_lists_builtins():
    with pytest.raises(SpaceError, match="hybrid"):
        load_space("hybird")


def test_arch_round_trips_exactly(tmp_path):
    space = load_space("hybrid")
    rng = random.Random(0)
    for i in range(20):
        arch = space.random(rng)
        path = tmp_path / f"arch{i}.yaml"
        dump_arch(arch, path)
        again = load_arch(path)
        assert again == arch and hash(again) == hash(arch)
        assert dump_arch(again) == path.read_text()
        assert space.contains(arch)
        assert Arch.from_dict(arch.to_dict()) == arch


def test_contains_rejects_what_the_space_does_not_offer(tmp_path):
    space = load_space(write(tmp_path, MINI))
    arch = space.random(1)
    stage = arch.stages[0]
    wider = Arch(arch.stem, (stage.__class__(stage.op, 48, stage.depth, stage.stride, stage.params),)
                 + arch.stages[1:], arch.head, arch.in_chans, arch.num_classes, arch.input_size)
    assert not space.contains(wider)
    assert not space.contains(load_reference("resnet50"))


def test_constraints_are_met_by_random_samples(tmp_path):
    space = load_space(write(tmp_path, MINI))
    for seed in range(30):
        widths = [s.width for s in space.random(seed).stages]
        assert widths == sorted(widths)


def test_references_of_the_default_space():
    space = load_space("hybrid")
    contained = [name for name in list_references() if space.contains(load_reference(name))]
    assert "swin_t" in contained and "acmix_swin_t" in contained
    assert "resnet50" not in contained  # its 7x7 + max-pool stem is not offered


def test_optuna_sampling_uses_hierarchical_names(tmp_path):
    space = load_space(write(tmp_path, MINI))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_ops = set()
    for _ in range(40):
        trial = study.ask()
        arch = space.sample(trial)
        names = set(trial.params)
        assert {"stem.width", "s1.op", "s1.width", "s1.depth", "s2.op", "s2.width"} <= names
        assert "s2.depth" not in names  # a single choice is fixed, not sampled
        op1 = arch.stages[0].op
        seen_ops.add(op1)
        assert ({"s1.swin.window", "s1.swin.heads"} <= names) == (op1 == "swin")
        assert ("s2.mbconv.expansion" in names) == (arch.stages[1].op == "mbconv")
        study.tell(trial, 0.0)
    assert seen_ops == {"resnet_basic", "swin"}


def _cli(module: str, *args):
    """``python -m MODULE ARGS`` in this process (``run_cli``: exit code, stdout and stderr as a child's)."""
    import importlib

    from search_helpers import run_cli

    return run_cli(importlib.import_module(module).main, *args)


def test_space_cli_summarizes(tmp_path):
    result = _cli("nas.space", str(write(tmp_path, MINI)), "--json")
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["architectures"] == load_space(write(tmp_path, MINI)).size()
    assert 0 < summary["smallest_flops"] < summary["largest_flops"]


@pytest.mark.parametrize("args,needle", [
    (("nas.space", "no/such/space.yaml"), "cannot be read"),
    (("nas.space", "hybird"), "built-in spaces: hybrid"),
    (("nas.flops", "no/such/arch.yaml"), "cannot be read"),
    (("nas.flops", "{ref}", "--input", "3x224"), "CxHxW"),
    (("nas.flops", "{ref}", "--input", "1x224x224"), "channels"),
    (("nas.flops",), "required"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle):
    ref = str(load_space("hybrid").source).replace("hybrid.yaml", "references/resnet50.yaml")
    result = _cli(*(a.replace("{ref}", ref) for a in args))
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_space_file_through_the_cli(tmp_path):
    result = _cli("nas.space", str(write(tmp_path, MINI.replace("depth: 1", "depth: -1"))))
    assert result.returncode == 2 and "stages[1].depth" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_flops_cli_json_has_integer_counts():
    import json

    ref = str(load_space("hybrid").source).replace("hybrid.yaml", "references/resnet50.yaml")
    result = _cli("nas.flops", ref, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out["flops"], int) and isinstance(out["params"], int)
    assert sum(out["stages"].values()) == out["flops"]


def test_every_operator_of_the_default_space_is_sampled_in_every_stage_that_offers_it():
    """300 random Archs: each stage's counts add up to 300, and no operator a stage offers is left out (with 25
    operators a stage, the chance that a uniform draw misses one is about 25 x (24/25)^300 = 1e-4)."""
    from nas.space import op_frequencies

    space = load_space("hybrid")
    counts = op_frequencies(space, 300)
    for i, stage in enumerate(space.stages):
        assert sum(counts[i].values()) == 300
        assert set(counts[i]) == {o.name for o in stage.ops}
        assert min(counts[i].values()) > 0, (i, counts[i])


def test_samples_report_the_flops_quantiles_of_the_drawn_architectures(tmp_path, capsys):
    from search_helpers import write_space

    from nas.flops import count_flops, format_flops
    from nas.network import build_uninitialized
    from nas.space import _main, quantiles, sample_flops

    assert quantiles([5, 1, 4, 2, 3], (0.0, 0.25, 0.5, 1.0)) == [1, 2, 3, 5]
    assert quantiles([0, 10], (0.05, 0.95)) == pytest.approx([0.5, 9.5])  # between order statistics
    path = write_space(tmp_path)
    space = load_space(path)
    rng = random.Random(0)  # the draws op_frequencies makes: seed 0
    archs = [space.random(rng) for _ in range(8)]
    flops = sample_flops(space, 8)
    assert flops == [count_flops(build_uninitialized(a), (1, a.in_chans, a.input_size, a.input_size))
                     for a in archs]
    budget = sorted(flops)[5]  # six of the eight are within it (ties counted in)
    assert _main([str(path), "--samples", "8", "--budget", str(budget)]) == 0
    q = quantiles(flops)
    out = capsys.readouterr().out
    assert (f"5 % {format_flops(q[0])}, 25 % {format_flops(q[1])}, median {format_flops(q[2])}, "
            f"75 % {format_flops(q[3])}, 95 % {format_flops(q[4])}") in out
    assert f"within {format_flops(budget)}: {sum(f <= budget for f in flops) / 8:.0%}" in out
