"""Regularized evolution (Real et al., 2019, "Regularized Evolution for Image Classifier Architecture Search",
AAAI) as an Optuna sampler over an opmix space: ``--sampler evolution``.

The study is the population: its last ``population_size`` (P) trials that are COMPLETE and feasible (every
constraint value <= 0), by trial number, so the oldest member dies when a new one completes (age = trial
number) and a resumed run, or a new sampler on the same storage, continues from the study alone. A trial
that ASHA stopped (PRUNED), failed or broke a budget is no member; nor is a proposal that the searcher caught
as a repeat of a network already trained (user attribute ``duplicate_of``): its training counted once.
References added to the study (``--seed-references``, ``nas._searcher``) are members like any other trial.

Until P members exist, candidates are drawn at random (Optuna's ``RandomSampler``). Then a tournament of S
members drawn without replacement picks the parent: with ``selection="accuracy"`` the most accurate (the
first objective); with ``selection="pareto"`` the lowest non-dominated rank over the population, then the
largest crowding distance, as NSGA-II ranks (ties: the younger). The child is the parent with exactly one
mutation (``mutate``): one stage's operator, one width step (a stage's or the stem's), one depth step or one
operator parameter. A child outside the space, against its cheap constraints (``Space.contains``) or already
in the study is drawn again, up to ``max_tries`` times, then the trial falls back to random sampling. The
child reaches define-by-run ``Space.sample`` as the values ``sample_independent`` returns for its parameters
(``Space.params_of``); a trial with fixed parameters (``enqueue_trial``) is left to them.

Each trial's draws come from a generator seeded by (seed, trial number), so a proposal is a function of the
seed, the trial's number and the study's trials, whatever the sampler did before. Departures from the paper:
the population is a window on the study rather than a queue of its own, and a child already in the study is
drawn again rather than trained twice.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from .arch import Arch
from .space import Space

__all__ = ["EvolutionSampler", "NSGAIISampler", "mutate", "nondominated_ranks", "crowding_distances"]


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, made picklable. Ray Tune pickles the searcher, sampler included, into its experiment
    state when the tuner starts and at each checkpoint; Optuna's genetic samplers hold a ``threading.Lock``,
    which does not pickle, so ``--sampler nsga2`` failed before the first trial. The lock is left out of the
    pickle and made anew when unpickled; the rest of the state (the seeded generator included) travels."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


SELECTIONS = ("accuracy", "pareto")
MUTATIONS = ("op", "width", "depth", "param")


class EvolutionSampler(BaseSampler):
    """Regularized evolution over ``space``: population ``population_size``, tournament ``tournament_size``,
    ``selection`` ``"accuracy"`` (the first objective) or ``"pareto"`` (non-dominated rank, then crowding)."""

    def __init__(self, space: Space, *, population_size: int = 20, tournament_size: int = 5,
                 selection: str = "accuracy", seed: int | None = None, max_tries: int = 100):
        if not 1 <= tournament_size <= population_size:
            raise ValueError(f"tournament_size {tournament_size} and population_size {population_size}: give "
                             f"1 <= tournament_size <= population_size")
        if selection not in SELECTIONS:
            raise ValueError(f"selection {selection!r} is not known; use one of {', '.join(SELECTIONS)}")
        self.space, self.population_size, self.tournament_size = space, population_size, tournament_size
        self.selection, self.max_tries = selection, max_tries
        self._seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else int(seed)
        self._random = RandomSampler(seed=self._seed)
        self._children: dict[int, dict[str, Any]] = {}  # trial id -> the child's parameters

    # ------------------------------------------------------------------------------- Optuna's sampler API
    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution) -> Any:
        child = self._children.get(trial._trial_id)
        if child is not None and param_name in child:
            return child[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial: FrozenTrial) -> None:
        seed = self._trial_seed(trial.number)
        self._random = RandomSampler(seed=seed)  # random draws, too, depend on the trial's number alone
        if "fixed_params" in trial.system_attrs:  # enqueued (a retrain on --resume): its parameters stand
            return
        members = self.population(study)
        if len(members) < self.population_size:
            return
        rng = random.Random(seed)
        parent = self.tournament(members, study.directions, rng)
        seen = {_key(t.params) for t in study.get_trials(deepcopy=False) if t.params}
        arch = self.space.sample(optuna.trial.FixedTrial(parent.params))
        for _ in range(self.max_tries):
            child, what = mutate(self.space, arch, rng)
            params = self.space.params_of(child)
            if self.space.contains(child) and _key(params) not in seen:
                self._children[trial._trial_id] = params
                study._storage.set_trial_system_attr(trial._trial_id, "evolution:parent", parent.number)
                study._storage.set_trial_system_attr(trial._trial_id, "evolution:mutation", what)
                return
        study._storage.set_trial_system_attr(trial._trial_id, "evolution:parent", None)  # fell back to random

    def after_trial(self, study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._children.pop(trial._trial_id, None)

    # --------------------------------------------------------------------------------- population, selection
    def population(self, study) -> list[FrozenTrial]:
        """The last ``population_size`` COMPLETE, feasible, non-duplicate trials, oldest first."""
        members = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if t.values is not None and all(v <= 0 for v in t.constraints.values())
                   and "duplicate_of" not in t.user_attrs]
        return sorted(members, key=lambda t: t.number)[-self.population_size:]

    def tournament(self, members: list[FrozenTrial], directions, rng: random.Random) -> FrozenTrial:
        """The best of ``tournament_size`` members drawn without replacement (ties: the younger)."""
        drawn = rng.sample(range(len(members)), min(self.tournament_size, len(members)))
        maximize = tuple(d == optuna.study.StudyDirection.MAXIMIZE for d in directions)
        if self.selection == "accuracy":
            sign = 1.0 if maximize[0] else -1.0
            return members[max(drawn, key=lambda i: (sign * members[i].values[0], members[i].number))]
        values = np.array([t.values for t in members], dtype=float)
        ranks = nondominated_ranks(values, maximize)
        crowding = crowding_distances(values, ranks)
        return members[min(drawn, key=lambda i: (ranks[i], -crowding[i], -members[i].number))]

    def _trial_seed(self, number: int) -> int:
        return int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])


def _key(params: dict[str, Any]) -> frozenset:
    return frozenset(params.items())


# ---------------------------------------------------------------------------------------------- mutation
def mutate(space: Space, arch: Arch, rng: random.Random) -> tuple[Arch, str]:
    """``arch`` with one thing changed, and what (``"s2.op swin -> nat"``): a kind of mutation drawn uniformly
    among those the space allows (operator, width step, depth step, operator parameter), then its place.

    A width or depth step moves to the next value up or down in the choice's list. An operator change keeps
    the stage's width (or takes the nearest the new operator offers, the smaller on a tie) and the parameters
    the new operator shares with the old where it offers their values; its other parameters are drawn. The
    result may break the space's constraints: the caller checks (``Space.contains``)."""
    stem = arch.stem.width
    stages = [[s.op, s.width, s.depth, s.kwargs] for s in arch.stages]
    sites: dict[str, list] = {kind: [] for kind in MUTATIONS}
    if len(space.stem_width.values) > 1:
        sites["width"].append(("stem", None))
    for i, (s, sp) in enumerate(zip(arch.stages, space.stages)):
        op = next(o for o in sp.ops if o.name == s.op)
        if len(sp.ops) > 1:
            sites["op"].append((i, None))
        if len(sp.widths(op).values) > 1:
            sites["width"].append((i, None))
        if len(sp.depth.values) > 1:
            sites["depth"].append((i, None))
        sites["param"] += [(i, p) for p, c in op.params if len(c.values) > 1]
    kinds = [k for k in MUTATIONS if sites[k]]
    if not kinds:
        raise ValueError(f"space {space.name} ({space.source}) holds one architecture: nothing to mutate")
    kind = rng.choice(kinds)
    i, param = rng.choice(sites[kind])
    if i == "stem":
        new = _step(space.stem_width.values, stem, rng)
        return space.make_arch(new, [tuple(s) for s in stages]), f"stem.width {stem} -> {new}"
    sp, (name, width, depth, params) = space.stages[i], stages[i]
    op = next(o for o in sp.ops if o.name == name)
    if kind == "width":
        stages[i][1] = _step(sp.widths(op).values, width, rng)
        what = f"s{i + 1}.width {width} -> {stages[i][1]}"
    elif kind == "depth":
        stages[i][2] = _step(sp.depth.values, depth, rng)
        what = f"s{i + 1}.depth {depth} -> {stages[i][2]}"
    elif kind == "param":
        choice = dict(op.params)[param]
        new = rng.choice([v for v in choice.values if v != params[param]])
        stages[i][3] = {**params, param: new}
        what = f"s{i + 1}.{name}.{param} {params[param]} -> {new}"
    else:
        new_op = rng.choice([o for o in sp.ops if o.name != name])
        widths = sp.widths(new_op).values
        new_width = width if width in widths else min(widths, key=lambda w: (abs(w - width), w))
        new_params = {p: params[p] if params.get(p) in c.values else rng.choice(c.values) for p, c in new_op.params}
        stages[i] = [new_op.name, new_width, depth, new_params]
        what = f"s{i + 1}.op {name} -> {new_op.name}"
    return space.make_arch(stem, [tuple(s) for s in stages]), what


def _step(values: tuple, value: Any, rng: random.Random) -> Any:
    """The value next to ``value`` in ``values`` (up or down, drawn where both exist)."""
    j = values.index(value)
    return values[rng.choice([k for k in (j - 1, j + 1) if 0 <= k < len(values)])]


# ------------------------------------------------------------------------------------- NSGA-II's ranking
def nondominated_ranks(values: np.ndarray, maximize: tuple[bool, ...]) -> np.ndarray:
    """Each row's non-dominated front, 0 for the Pareto front, 1 for the front once it is removed, and so on
    (Deb et al., 2002, NSGA-II); a row with a NaN ranks after all others."""
    from .pareto import pareto_mask

    values = np.asarray(values, dtype=float)
    ranks = np.full(len(values), -1)
    ranks[np.isnan(values).any(axis=1)] = len(values)  # never on a front: last, whatever the others
    rank = 0
    while (ranks < 0).any():
        left = np.flatnonzero(ranks < 0)
        ranks[left[pareto_mask(values[left], maximize)]] = rank
        rank += 1
    return ranks


def crowding_distances(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row within its front: the sum over objectives of the gap between
    its two neighbours in units of the front's range; the ends of a front (and fronts of two) are infinite."""
    values = np.asarray(values, dtype=float)
    out = np.zeros(len(values))
    for rank in np.unique(ranks):
        rows = np.flatnonzero(ranks == rank)
        for k in range(values.shape[1]):
            order = rows[np.argsort(values[rows, k], kind="stable")]
            out[order[0]] = out[order[-1]] = np.inf
            span = values[order[-1], k] - values[order[0], k]
            if len(order) > 2 and span > 0:
                out[order[1:-1]] += (values[order[2:], k] - values[order[:-2], k]) / span
    return out
