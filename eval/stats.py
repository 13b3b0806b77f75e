"""Aggregate statistics for reliable evaluation over few runs (Agarwal et al., NeurIPS 2021).

These are the methods of the `rliable <https://github.com/google-research/rliable>`_ library,
implemented with numpy (rliable itself pulls in scipy and arch for what is a few array
operations here):

* :func:`iqm`, the interquartile mean: the mean of the middle 50 % of all runs pooled over tasks
  (``scipy.stats.trim_mean(scores, 0.25, axis=None)``), robust to outlier runs yet less noisy
  than the median;
* :func:`bootstrap_ci`, percentile confidence intervals from the *stratified* bootstrap: runs are
  resampled with replacement within each task (here: seeds within a scenario), so every task
  keeps its weight;
* :func:`probability_of_improvement`: the probability that a random run of X beats a random run
  of Y on a random task (the Mann-Whitney U statistic per task, averaged over tasks), with
  :func:`probability_of_improvement_ci`;
* :func:`performance_profile`: the run-score distribution, the share of runs whose score is
  better than a threshold, for a range of thresholds, with :func:`performance_profile_ci`;
* :func:`paired_difference_ci`: the difference of a statistic between two controllers run on the
  same seeds, bootstrapped with the *same* resampled seeds for both (the runs are paired).

Scores are arrays of shape ``(n_runs, n_tasks)`` (a 1-D array is one task). Every bootstrap
draws from a :class:`numpy.random.Generator` passed in; :func:`keyed_rng` derives one per
quantity from a seed and names, so that an interval does not depend on what else was computed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

#: A statistic reducing the last two axes ``(n_runs, n_tasks)`` of an array (leading axes are
#: bootstrap replicates).
Statistic = Callable[[np.ndarray], np.ndarray]

#: Bootstrap replicates are drawn in blocks of at most this many values, to bound memory.
_BLOCK_VALUES = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float

    @property
    def below_zero(self) -> bool:
        """The whole interval is below zero."""
        return self.high < 0.0

    @property
    def excludes_zero(self) -> bool:
        return self.high < 0.0 or self.low > 0.0

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high}


def keyed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator determined by ``seed`` and ``keys`` (stable across runs and platforms)."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def as_runs_by_tasks(scores: ArrayLike) -> np.ndarray:
    """``scores`` as a float array ``(n_runs, n_tasks)``; a 1-D array is one task."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, np.newaxis]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"scores must be (n_runs, n_tasks) with runs and tasks, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("scores must be finite (a run without a value cannot be aggregated)")
    return array


def iqm_statistic(scores: np.ndarray) -> np.ndarray:
    """The interquartile mean over the last two axes (all runs of all tasks pooled)."""
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(0.25 * n)  # scipy.stats.trim_mean's rounding: cut int(proportion * n) per side
    return flat[..., cut : n - cut].mean(axis=-1)


def mean_statistic(scores: np.ndarray) -> np.ndarray:
    """The mean over the last two axes."""
    return scores.mean(axis=(-2, -1))


def iqm(scores: ArrayLike) -> float:
    """The interquartile mean of all runs of all tasks (25 % trimmed from each end)."""
    return float(iqm_statistic(as_runs_by_tasks(scores)))


def _resample_indices(n_runs: int, n_tasks: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap: ``reps`` resamples of run indices drawn within each task."""
    return rng.integers(0, n_runs, size=(reps, n_runs, n_tasks))


def _take(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.take_along_axis(scores[np.newaxis], indices, axis=1)


def _blocks(reps: int, values_per_rep: int) -> list[int]:
    size = max(1, _BLOCK_VALUES // max(1, values_per_rep))
    return [min(size, reps - start) for start in range(0, reps, size)]


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(replicates, [tail, 100.0 - tail], axis=0)
    return low, high


def _check_reps(reps: int) -> None:
    if reps < 1:
        raise ValueError(f"bootstrap replicates must be >= 1, got {reps}")


def bootstrap_ci(
    scores: ArrayLike,
    rng: np.random.Generator,
    statistic: Statistic = iqm_statistic,
    reps: int = 10_000,
    confidence: float = 0.95,
) -> Interval:
    """A statistic of ``scores`` with its stratified-bootstrap percentile interval.

    Parameters
    ----------
    scores:
        ``(n_runs, n_tasks)`` scores (or 1-D: one task).
    rng:
        Draws the resamples.
    statistic:
        Reduces ``(..., n_runs, n_tasks)`` over the last two axes (default: the IQM).
    reps, confidence:
        Bootstrap replicates and interval size.
    """
    x = as_runs_by_tasks(scores)
    _check_reps(reps)
    replicates = np.concatenate(
        [
            statistic(_take(x, _resample_indices(*x.shape, block, rng)))
            for block in _blocks(reps, x.size)
        ]
    )
    low, high = _percentiles(replicates, confidence)
    return Interval(float(statistic(x)), float(low), float(high))


def paired_difference_ci(
    x: ArrayLike,
    y: ArrayLike,
    rng: np.random.Generator,
    statistic: Statistic = iqm_statistic,
    reps: int = 10_000,
    confidence: float = 0.95,
) -> Interval:
    """``statistic(x) - statistic(y)`` for runs paired by index (the same seeds), with a
    stratified-bootstrap interval that resamples the same runs of both.

    Parameters are as for :func:`bootstrap_ci`; ``x`` and ``y`` must have the same shape.
    """
    a, b = as_runs_by_tasks(x), as_runs_by_tasks(y)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same shape, got {a.shape} and {b.shape}")
    _check_reps(reps)
    replicates = []
    for block in _blocks(reps, 2 * a.size):
        indices = _resample_indices(*a.shape, block, rng)
        replicates.append(statistic(_take(a, indices)) - statistic(_take(b, indices)))
    low, high = _percentiles(np.concatenate(replicates), confidence)
    return Interval(float(statistic(a) - statistic(b)), float(low), float(high))


def _improvement(x: np.ndarray, y: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """P(X better than Y) per leading index: U statistic per task (ties count half), averaged
    over tasks. ``x``: ``(..., n, T)``, ``y``: ``(..., m, T)``."""
    a, b = x[..., :, np.newaxis, :], y[..., np.newaxis, :, :]
    better = (a < b) if lower_is_better else (a > b)
    per_task = better.mean(axis=(-3, -2)) + 0.5 * (a == b).mean(axis=(-3, -2))
    return per_task.mean(axis=-1)


def _check_tasks(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must have the same tasks, got {x.shape[1]} and {y.shape[1]}")


def probability_of_improvement(x: ArrayLike, y: ArrayLike, lower_is_better: bool = False) -> float:
    """P(X > Y): the probability that a run of X scores better than a run of Y on a task drawn
    uniformly (rliable's ``probability_of_improvement``; ``lower_is_better`` for costs).

    Parameters
    ----------
    x, y:
        ``(n_runs, n_tasks)`` scores of the two algorithms (run counts may differ).
    lower_is_better:
        Whether a lower score is better (budget spent, cost).
    """
    a, b = as_runs_by_tasks(x), as_runs_by_tasks(y)
    _check_tasks(a, b)
    return float(_improvement(a, b, lower_is_better))


def probability_of_improvement_ci(
    x: ArrayLike,
    y: ArrayLike,
    rng: np.random.Generator,
    lower_is_better: bool = False,
    reps: int = 10_000,
    confidence: float = 0.95,
) -> Interval:
    """:func:`probability_of_improvement` with a stratified-bootstrap interval that resamples
    the runs of X and of Y independently, as rliable does."""
    a, b = as_runs_by_tasks(x), as_runs_by_tasks(y)
    _check_tasks(a, b)
    _check_reps(reps)
    replicates = [
        _improvement(
            _take(a, _resample_indices(*a.shape, block, rng)),
            _take(b, _resample_indices(*b.shape, block, rng)),
            lower_is_better,
        )
        for block in _blocks(reps, a.shape[0] * b.shape[0] * a.shape[1])
    ]
    low, high = _percentiles(np.concatenate(replicates), confidence)
    return Interval(float(_improvement(a, b, lower_is_better)), float(low), float(high))


def _profile(scores: np.ndarray, taus: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Share of runs better than each tau, per task averaged over tasks: ``(..., n_taus)``."""
    s = scores[..., np.newaxis]
    better = (s <= taus) if lower_is_better else (s > taus)
    return better.mean(axis=(-3, -2))


def performance_profile(
    scores: ArrayLike, taus: ArrayLike, lower_is_better: bool = False
) -> np.ndarray:
    """The run-score distribution: for each threshold ``tau``, the share of runs scoring above
    it (``lower_is_better``: at or below it), averaged over tasks so each task weighs the same.

    Parameters
    ----------
    scores:
        ``(n_runs, n_tasks)`` scores.
    taus:
        Thresholds.
    lower_is_better:
        Count runs at or below ``tau`` (a profile that rises with ``tau``) instead of above.
    """
    return _profile(as_runs_by_tasks(scores), np.asarray(taus, dtype=np.float64), lower_is_better)


def performance_profile_ci(
    scores: ArrayLike,
    taus: ArrayLike,
    rng: np.random.Generator,
    lower_is_better: bool = False,
    reps: int = 2_000,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`performance_profile` with pointwise stratified-bootstrap bands:
    ``(profile, low, high)``, each of shape ``(n_taus,)``."""
    x, t = as_runs_by_tasks(scores), np.asarray(taus, dtype=np.float64)
    _check_reps(reps)
    replicates = np.concatenate(
        [
            _profile(_take(x, _resample_indices(*x.shape, block, rng)), t, lower_is_better)
            for block in _blocks(reps, x.size * t.size)
        ]
    )
    low, high = _percentiles(replicates, confidence)
    return _profile(x, t, lower_is_better), low, high


def frontier_at(cost: float, costs: ArrayLike, spent: ArrayLike) -> tuple[float, int]:
    """The budget spent along a cost-against-budget frontier at ``cost``, and where ``cost``
    lies: -1 below the frontier's cost range, 0 within it, 1 above it.

    The frontier joins, by increasing cost, the points ``(costs[i], spent[i])`` that no other
    point beats on both (cheaper and spending less), linearly. Outside its cost range it is
    continued flat from its end point, a bound: a frontier only falls with cost, so at a lower
    cost it spends at least what its cheapest point does, at a higher cost at most what its
    dearest point does.
    """
    c, s = np.asarray(costs, dtype=np.float64), np.asarray(spent, dtype=np.float64)
    front_cost: list[float] = []
    front_spent: list[float] = []
    for i in np.lexsort((s, c)):  # by cost, then budget spent
        if not front_spent or s[i] < front_spent[-1]:
            front_cost.append(float(c[i]))
            front_spent.append(float(s[i]))
    side = -1 if cost < front_cost[0] else 1 if cost > front_cost[-1] else 0
    return float(np.interp(cost, front_cost, front_spent)), side


def frontier_gap_ci(
    spent: ArrayLike,
    cost: ArrayLike,
    frontier_spent: ArrayLike,
    frontier_cost: ArrayLike,
    rng: np.random.Generator,
    reps: int = 10_000,
    confidence: float = 0.95,
) -> tuple[Interval, int]:
    """How far a controller lies below (negative) or above a frontier, with a bootstrap interval.

    The gap is the controller's IQM budget spent minus the frontier's (:func:`frontier_at`) at
    the controller's IQM cost, the frontier's points being IQMs too. Runs are paired by seed:
    every replicate resamples the same seeds for the controller and every point.

    Parameters
    ----------
    spent, cost:
        The controller's runs, ``(n_seeds,)``.
    frontier_spent, frontier_cost:
        The frontier's points, ``(n_points, n_seeds)``, on the same seeds.
    rng, reps, confidence:
        As for :func:`bootstrap_ci`.

    Returns
    -------
    ``(gap, side)``: the gap with its percentile interval, and where the controller's IQM cost
    lies against the frontier's cost range (see :func:`frontier_at`). Below the range the gap is
    an upper bound (it can only be more negative), above it a lower bound.
    """
    x = np.column_stack([np.asarray(spent, dtype=np.float64), np.asarray(cost, dtype=np.float64)])
    points = np.stack(
        [np.asarray(frontier_spent, dtype=np.float64), np.asarray(frontier_cost, dtype=np.float64)]
    )  # (2, n_points, n_seeds)
    if points.shape[2] != x.shape[0] or not np.all(np.isfinite(points)):
        raise ValueError(
            f"frontier points must be finite (n_points, {x.shape[0]}) arrays, one run per seed "
            f"of the controller, got {points.shape[1:]}"
        )
    _check_reps(reps)

    def gap(columns: np.ndarray, point_runs: np.ndarray) -> tuple[float, int]:
        own = iqm_statistic(columns[:, :, np.newaxis])  # (2,): spent, cost
        front = iqm_statistic(point_runs[..., np.newaxis])  # (2, n_points)
        budget, side = frontier_at(own[1], front[1], front[0])
        return float(own[0] - budget), side

    point, side = gap(x.T, points)
    indices = rng.integers(0, x.shape[0], size=(reps, x.shape[0]))
    replicates = np.array([gap(x[i].T, points[:, :, i])[0] for i in indices])
    low, high = _percentiles(replicates, confidence)
    return Interval(point, float(low), float(high)), side
