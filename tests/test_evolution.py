"""``--sampler evolution`` (``nas.evolution``): mutations that change one thing and stay in the space, the
tournament, the population as a window on the study (the oldest dies, references join it, a resumed study
continues it) and the budget searcher refusing nothing of the space's constraints from a mutant.

Studies are in memory (or SQLite in ``tmp_path`` for the resume), built by hand through ``enqueue_trial``; the
searcher is driven as Ray Tune drives it, with a counting fake ``measure`` (as in ``test_search_runtime``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from types import SimpleNamespace

import optuna
import pytest
from search_helpers import write_space

from nas._loop import make_sampler
from nas.arch import Arch
from nas._searcher import BudgetSearcher
from nas.evolution import EvolutionSampler, crowding_distances, mutate, nondominated_ranks
from nas.rundir import RunDir
from nas.search import SAMPLERS
from nas.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
BUDGET = 10**12  # the fake FLOPs below never reach it: only the space's constraints refuse

# Two stages, operators with parameters, a stem choice and both constraints: small enough that mutants
# often break a constraint (a width step down in stage 1, a depth step up) and must be drawn again.
SMALL = """
name: small
stem: {type: patch4, width: [16, 32]}
stages:
- output_stride: 4
  ops: [resnet_basic, {op: convnext, attn: [none, se, eca]}]
  width: [16, 32, 64]
  depth: [1, 2, 3]
- output_stride: 8
  ops: [resnet_basic, {op: mbconv, expansion: [2, 4], attn: [none, eca]}, {op: convnext, attn: [none, se]}]
  width: [32, 64]
  depth: [1, 2]
constraints: {widths_non_decreasing: true, max_total_depth: 4}
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return load_space(write_space(tmp_path_factory.mktemp("space"), SMALL))


@pytest.fixture(scope="module")
def hybrid():
    return load_space("hybrid")


def fake_flops(arch) -> int:
    return 1_000_000 * sum(s.width * s.depth for s in arch.stages)


def changes(space, parent, child) -> list[tuple]:
    """The things ``child`` changed in ``parent``: ('stem',), ('op', i), ('width', i), ('depth', i) or
    ('param', i, name); a width or depth change that is not one step of its choice list is reported as
    ('jump', ...). An operator change brings its own width and parameters: they count with it."""
    out = []
    if parent.stem.width != child.stem.width:
        values = space.stem_width.values
        step = abs(values.index(parent.stem.width) - values.index(child.stem.width))
        out.append(("stem",) if step == 1 else ("jump", "stem"))
    for i, (a, b, sp) in enumerate(zip(parent.stages, child.stages, space.stages)):
        if a.op != b.op:
            out.append(("op", i))
            continue
        op = next(o for o in sp.ops if o.name == a.op)
        for kind, values in (("width", sp.widths(op).values), ("depth", sp.depth.values)):
            x, y = getattr(a, kind), getattr(b, kind)
            if x != y:
                out.append((kind, i) if abs(values.index(x) - values.index(y)) == 1 else ("jump", kind, i))
        out += [("param", i, p) for p in a.kwargs if a.kwargs[p] != b.kwargs[p]]
    return out


def kinds_of(space, arch) -> list[str]:
    """The kinds of mutation ``arch`` offers: an operator (a stage with two or more), a width step (the stem
    or a stage with two widths or more for its operator), a depth step, a parameter of a chosen operator."""
    out = []
    ops = [next(o for o in sp.ops if o.name == s.op) for s, sp in zip(arch.stages, space.stages)]
    if any(len(sp.ops) > 1 for sp in space.stages):
        out.append("op")
    if len(space.stem_width.values) > 1 or any(len(sp.widths(o).values) > 1 for sp, o in zip(space.stages, ops)):
        out.append("width")
    if any(len(sp.depth.values) > 1 for sp in space.stages):
        out.append("depth")
    if any(len(c.values) > 1 for o in ops for _, c in o.params):
        out.append("param")
    return out


# ------------------------------------------------------------------------------------------------ mutation
@pytest.mark.parametrize("which,draws", [("small", 3000), ("hybrid", 3000)])
def test_a_mutant_changes_exactly_one_thing_by_one_step(which, draws, request):
    space = request.getfixturevalue(which)
    rng = random.Random(0)
    kinds, inside = Counter(), 0
    expected, variance = Counter(), Counter()
    for k in range(draws):
        parent = space.random(rng)
        child, what = mutate(space, parent, rng)
        changed = changes(space, parent, child)
        assert len(changed) == 1 and changed[0][0] != "jump", (what, changed)
        kinds["width" if changed[0][0] == "stem" else changed[0][0]] += 1
        inside += space.contains(child)
        if changed[0][0] == "op":  # the width is kept where the new operator offers it, as are shared parameters
            i = changed[0][1]
            a, b, sp = parent.stages[i], child.stages[i], space.stages[i]
            new = next(o for o in sp.ops if o.name == b.op)
            if a.width in sp.widths(new).values:
                assert b.width == a.width
            assert all(b.kwargs[p] == a.kwargs[p] for p in set(a.kwargs) & set(b.kwargs)
                       if a.kwargs[p] in dict(new.params)[p].values)
        offered = kinds_of(space, parent)
        for kind in offered:  # a kind is drawn uniformly among those the parent offers
            expected[kind] += 1 / len(offered)
            variance[kind] += 1 / len(offered) * (1 - 1 / len(offered))
    for kind in ("op", "width", "depth", "param"):  # each count within 5 standard deviations of its expectation
        assert abs(kinds[kind] - expected[kind]) < 5 * math.sqrt(variance[kind]), (kind, kinds, expected)
    assert inside > draws / 2  # most mutants stay in; the sampler draws the others again (next tests)


@pytest.mark.parametrize("which,asks", [("small", 30), ("hybrid", 200)])
def test_the_sampler_proposes_only_children_inside_the_space_and_its_constraints(which, asks, request):
    space = request.getfixturevalue(which)
    sampler = EvolutionSampler(space, population_size=4, tournament_size=2, seed=3)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(1)
    members = [space.random(rng) for _ in range(4)]
    for j, arch in enumerate(members):
        add(study, space, arch, accuracy=0.5 + 0.1 * j)
    for _ in range(asks):  # (the small space's 4 members have few more neighbours than 30 inside it)
        trial = study.ask()
        child = space.sample(trial)
        parent = parent_of(study, trial)
        assert parent in range(4) and space.contains(child)
        assert len(changes(space, members[parent], child)) == 1
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no new member: the population stays the four


# -------------------------------------------------------------------------------------- helpers for studies
def parent_of(study, trial):
    """The parent the sampler recorded for a live trial (None: drawn at random), as the study stores it."""
    return study.trials[trial.number].system_attrs.get("evolution:parent")


def add(study, space, arch, *, accuracy: float, feasible: bool = True, state=None, **user_attrs) -> int:
    """A finished trial of ``arch`` (the searcher's way: parameters through ``sample``, its constraint set)."""
    study.enqueue_trial(space.params_of(arch), user_attrs=user_attrs)
    trial = study.ask()
    space.sample(trial)
    trial.set_constraint("flops_over_budget", -1.0 if feasible else 1.0)
    if state is None:
        study.tell(trial, [accuracy, float(fake_flops(arch))])
    else:
        study.tell(trial, state=state)
    return trial.number


def small_study(space, sampler, accuracies, seed: int = 0):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(seed)
    archs = []
    while len(archs) < len(accuracies):  # distinct networks
        arch = space.random(rng)
        if arch not in archs:
            archs.append(arch)
    numbers = [add(study, space, a, accuracy=acc) for a, acc in zip(archs, accuracies)]
    return study, archs, numbers


# ---------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize("size,tournament", [(6, 2), (6, 3), (6, 6)])
def test_the_tournament_picks_the_best_of_s_drawn_members(small, size, tournament):
    sampler = EvolutionSampler(small, population_size=size, tournament_size=tournament, seed=0)
    accuracies = [0.31, 0.74, 0.52, 0.18, 0.66, 0.45]  # by rank: 0.74 > 0.66 > 0.52 > 0.45 > 0.31 > 0.18
    study, _, numbers = small_study(small, sampler, accuracies)
    members = sampler.population(study)
    assert [t.number for t in members] == numbers
    n = 3000
    wins = Counter(sampler.tournament(members, study.directions, random.Random(k)).values[0] for k in range(n))
    # The member ranked r (1 = best) wins when it is drawn and the S - 1 others come from the P - r below it:
    # C(P - r, S - 1) / C(P, S), which is 0 below rank P - S + 1: those members never win.
    for r, acc in enumerate(sorted(accuracies, reverse=True), start=1):
        p = math.comb(size - r, tournament - 1) / math.comb(size, tournament)
        assert abs(wins[acc] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (acc, wins[acc] / n, p)


def test_pareto_selection_ranks_by_front_then_crowding(small):
    # accuracy (max), FLOPs (min): three points on the front, one behind it
    values = [[0.9, 5.0], [0.8, 3.0], [0.7, 1.0], [0.6, 4.0]]
    ranks = nondominated_ranks(values, (True, False))
    assert list(ranks) == [0, 0, 0, 1]
    crowding = crowding_distances(values, ranks)
    # the ends of a front are infinitely far; the middle: (0.9 - 0.7) / (0.9 - 0.7) + (5 - 1) / (5 - 1) = 2
    assert crowding[0] == crowding[2] == math.inf and crowding[1] == pytest.approx(2.0)
    assert crowding[3] == math.inf  # a front of one
    sampler = EvolutionSampler(small, population_size=4, tournament_size=2, selection="pareto", seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(5)
    for (acc, flops) in values:
        study.enqueue_trial(small.params_of(small.random(rng)))
        trial = study.ask()
        small.sample(trial)
        study.tell(trial, [acc, flops])
    members = sampler.population(study)
    picks = Counter(sampler.tournament(members, study.directions, random.Random(k)).number for k in range(2000))
    # a pair drawn with a front end in it goes to that end (the younger of the two ends: 2); (0, 1) goes to 0;
    # (1, 3) to 1 (rank 0 beats rank 1); 3 never wins. Of the 6 pairs: 2 wins 3 (02, 12, 23), 0 wins 2, 1 wins 1
    assert 3 not in picks
    for number, pairs in ((2, 3), (0, 2), (1, 1)):
        assert abs(picks[number] / 2000 - pairs / 6) < 0.05


def test_the_population_is_the_last_p_complete_feasible_trials_and_the_oldest_dies(small):
    sampler = EvolutionSampler(small, population_size=4, tournament_size=2, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = random.Random(2)
    kept = []
    for j in range(10):  # interleaved: members, an infeasible one, a pruned one, a repeat the searcher caught
        arch = small.random(rng)
        if j % 4 == 1:
            add(study, small, arch, accuracy=0.0, feasible=False)
        elif j == 6:
            add(study, small, arch, accuracy=0.9, state=optuna.trial.TrialState.PRUNED)
        elif j == 8:
            add(study, small, arch, accuracy=0.9, duplicate_of=0)
        else:
            kept.append(add(study, small, arch, accuracy=0.1 * j))
    assert kept == [0, 2, 3, 4, 7]  # trials 1, 5, 9 infeasible, 6 pruned, 8 a repeat
    assert [t.number for t in sampler.population(study)] == [2, 3, 4, 7]  # 0 is the oldest: it died
    for _ in range(10):  # every parent comes from the window
        trial = study.ask()
        small.sample(trial)
        assert parent_of(study, trial) in (2, 3, 4, 7)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    add(study, small, small.random(rng), accuracy=0.5)  # a new member: 2 dies
    assert [t.number for t in sampler.population(study)] == [3, 4, 7, len(study.trials) - 1]


def test_until_p_members_exist_candidates_are_random(small):
    sampler = EvolutionSampler(small, population_size=5, tournament_size=2, seed=0)
    study, _, _ = small_study(small, sampler, [0.5, 0.6, 0.7, 0.8])  # 4 of 5
    trial = study.ask()
    small.sample(trial)
    assert "evolution:parent" not in study.trials[trial.number].system_attrs


def test_defaults_of_make_sampler_and_the_command_line(small):
    assert "evolution" in SAMPLERS
    for trials, population, tournament in ((20, 6, 2), (60, 20, 5), (6, 4, 2), (200, 20, 5)):
        # P = max(4, min(20, trials // 3)), S = max(2, P // 4)
        sampler = make_sampler("evolution", 0, trials, space=small)
        assert (sampler.population_size, sampler.tournament_size) == (population, tournament)
        assert population == max(4, min(20, trials // 3)) and tournament == max(2, population // 4)
    assert make_sampler("evolution", 0, 20, space=small).selection == "accuracy"
    assert make_sampler("evolution", 0, 20, space=small, objectives=("accuracy", "latency")).selection == "pareto"
    with pytest.raises(ValueError, match="space"):
        make_sampler("evolution", 0, 20)


# ------------------------------------------------------------------------------------------- resume, seeds
def test_a_new_sampler_on_the_same_storage_continues_the_population(small, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = EvolutionSampler(small, population_size=4, tournament_size=4, seed=7)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                                sampler=first)
    rng = random.Random(4)
    archs = [small.random(rng) for _ in range(4)]
    for j, arch in enumerate(archs):
        add(study, small, arch, accuracy=[0.2, 0.9, 0.4, 0.3][j])
    trial = study.ask()
    child = small.sample(trial)
    assert parent_of(study, trial) == 1  # S = P: the best member, trial 1
    study.tell(trial, [0.5, float(fake_flops(child))])  # a member now: trial 0 died
    # the driver stops; a new one (a new sampler, even with another seed) reads the population from the study
    resumed = optuna.load_study(study_name="s", storage=storage,
                                sampler=EvolutionSampler(small, population_size=4, tournament_size=4, seed=8))
    assert [t.number for t in resumed.sampler.population(resumed)] == [1, 2, 3, 4]
    again = resumed.ask()
    grandchild = small.sample(again)
    assert parent_of(resumed, again) == 1 and len(changes(small, archs[1], grandchild)) == 1
    assert grandchild != child  # a child already in the study is drawn again


def test_a_proposal_depends_on_the_seed_and_the_studys_trials_alone(small):
    def proposal(seed: int, warm_up: int) -> dict:
        sampler = EvolutionSampler(small, population_size=4, tournament_size=2, seed=seed)
        other = optuna.create_study(sampler=sampler)
        for _ in range(warm_up):  # draws the sampler made for another study before do not matter
            small.sample(other.ask())
        study, _, _ = small_study(small, sampler, [0.3, 0.8, 0.6, 0.5])
        trial = study.ask()
        small.sample(trial)
        return trial.params

    assert proposal(0, 0) == proposal(0, 3)
    assert len({tuple(sorted(proposal(s, 0).items())) for s in range(6)}) > 1


# -------------------------------------------------------------------------- with the budget searcher
def make_searcher(tmp_path, space, sampler, references=()):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    measured = []

    def measure(arch):
        measured.append(arch)
        return fake_flops(arch), 1234

    searcher = BudgetSearcher(study=study, space=space, budget=BUDGET, epochs=2, run=run, measure=measure,
                              references=list(references), log=lambda m: None)
    return SimpleNamespace(searcher=searcher, study=study, run=run, measured=measured)


def train(s, trial_id: str, accuracy: float) -> None:
    for epoch in (1, 2):
        s.searcher.on_trial_result(trial_id, {"epoch": epoch, "accuracy": accuracy, "train_seconds": 0.1})
    s.searcher.on_trial_complete(trial_id, {"epoch": 2, "accuracy": accuracy})


def test_references_in_the_space_join_the_population_and_are_parents(small, tmp_path):
    rng = random.Random(9)
    a, b = small.random(rng), small.random(rng)
    outside = small.make_arch(16, [("resnet_basic", 64, 1, {}), ("resnet_basic", 32, 1, {})])  # widths decrease
    assert small.contains(a) and small.contains(b) and not small.contains(outside)
    sampler = EvolutionSampler(small, population_size=2, tournament_size=2, seed=0)
    s = make_searcher(tmp_path, small, sampler, references=[("ref-a", a), ("ref-out", outside), ("ref-b", b)])
    for k, acc in enumerate((0.4, 0.99, 0.7)):  # the references train first
        config = s.searcher.suggest(f"r{k}")
        assert config["reference"] is not None
        train(s, f"r{k}", acc)
    refs = {t.user_attrs["reference"]: t.number for t in s.study.trials}
    assert set(refs) == {"ref-a", "ref-b"}  # the one outside the space is not in the study
    assert [t.number for t in sampler.population(s.study)] == [refs["ref-a"], refs["ref-b"]]
    for k in range(5):  # no random start: the references are the population, b (0.7) beats a (0.4)
        config = s.searcher.suggest(f"c{k}")
        trial = s.study.trials[config["candidate"]]
        assert trial.system_attrs["evolution:parent"] == refs["ref-b"]
        assert len(changes(small, b, Arch.from_dict(config["arch"]))) == 1
        s.searcher.finish(f"c{k}", error="not trained in this test")  # FAIL: the population stays the two


def test_mutants_never_break_the_spaces_constraints_and_the_searcher_counts_flops_of_allowed_networks_only(
        small, tmp_path):
    sampler = EvolutionSampler(small, population_size=4, tournament_size=2, seed=1)
    s = make_searcher(tmp_path, small, sampler)
    for k in range(30):
        config = s.searcher.suggest(f"t{k}")
        assert config != "FINISHED"
        train(s, f"t{k}", accuracy=fake_flops(s.measured[-1]) / 1e9)  # wider, deeper networks score higher
    trials = s.study.trials
    children = [t for t in trials if t.system_attrs.get("evolution:parent") is not None]
    refused = [r for r in s.run.read_trials() if r["status"] == "infeasible"]
    assert len(children) >= 20  # after the 4 random members, children (a fallback to random is rare)
    # random draws break the constraints now and then and are refused before their FLOPs are counted;
    # no mutant does: the sampler drew it again
    assert all(small.constraint_violations(arch) == [] for arch in s.measured)
    assert {r["trial_id"] for r in refused}.isdisjoint({t.number for t in children})
    assert len(s.measured) == 30 and all(small.contains(arch) for arch in s.measured)
    assert refused and all(Arch.from_dict(r["arch"]) not in s.measured for r in refused)  # random ones, never counted


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_survives_the_pickle_ray_takes_of_the_searcher(name, small):
    # Ray Tune pickles the searcher with its sampler when the tuner starts; Optuna 5's NSGA-II holds a
    # threading.Lock, and `--sampler nsga2` failed there ("cannot pickle '_thread.lock' object").
    import pickle

    import optuna

    sampler = make_sampler(name, 3, 20, space=small)
    twin = pickle.loads(pickle.dumps(sampler))
    assert type(twin) is type(sampler)

    def draws(s):  # the first proposals of a study that only this sampler drives
        study = optuna.create_study(sampler=s, directions=["maximize", "minimize"])
        return [study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)]

    assert draws(twin) == draws(sampler)  # the seeded state travels: the copy proposes what the original does
