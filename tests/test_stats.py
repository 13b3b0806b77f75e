"""The rliable-style statistics of the benchmark against hand-computed values and known
properties."""

from __future__ import annotations

import numpy as np
import pytest

from eval.stats import (
    Interval,
    bootstrap_ci,
    frontier_at,
    frontier_gap_ci,
    iqm,
    keyed_rng,
    mean_statistic,
    paired_difference_ci,
    performance_profile,
    performance_profile_ci,
    probability_of_improvement,
    probability_of_improvement_ci,
)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8], 4.5),  # 2 cut from each end: mean of 3, 4, 5, 6
        ([0, 1, 2, 3, 100], 2.0),  # 1 cut from each end: the outlier is gone
        ([1, 2, 3, 10], 2.5),
        ([5.0, 7.0], 6.0),  # too few runs to trim: the mean
        ([0, 1, 10], 11 / 3),  # 0.75 runs a side: int() trims none (round() would trim one)
        ([0, 1, 2, 3, 10, 100], 4.0),  # 1.5 runs a side: one trimmed (round() would trim two)
        ([[1, 100], [2, 200], [3, 300], [4, 400]], 76.75),  # pooled: mean of 3, 4, 100, 200
    ],
)
def test_iqm_matches_hand_computed_values(scores, expected) -> None:
    assert iqm(scores) == pytest.approx(expected)


def test_iqm_of_a_constant_is_the_constant_with_a_degenerate_interval() -> None:
    scores = np.full((7, 3), 2.5)
    assert iqm(scores) == 2.5
    interval = bootstrap_ci(scores, keyed_rng(0, "constant"), reps=200)
    assert (interval.point, interval.low, interval.high) == (2.5, 2.5, 2.5)


def test_intervals_cover_the_true_centre_about_95_percent_of_the_time() -> None:
    """Coverage over 200 independent samples of 20 runs x 2 tasks (normal around 5, whose IQM
    and mean are both 5); the percentile bootstrap's coverage at this size is close to 95 %."""
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for trial in range(200):
        scores = rng.normal(5.0, 1.0, size=(20, 2))
        interval = bootstrap_ci(scores, keyed_rng(0, str(trial)), reps=1000)
        covered += interval.low < 5.0 < interval.high
        widths.append(interval.high - interval.low)
        assert interval.low <= interval.point <= interval.high
    assert 0.88 <= covered / 200 <= 0.99
    assert np.mean(widths) < 1.0


def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    scores = np.random.default_rng(2).exponential(size=(10, 4))
    first = bootstrap_ci(scores, keyed_rng(7, "a", "b"), reps=500)
    again = bootstrap_ci(scores, keyed_rng(7, "a", "b"), reps=500)
    other = bootstrap_ci(scores, keyed_rng(8, "a", "b"), reps=500)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert first.point == other.point


def test_stratified_bootstrap_keeps_every_task_weight() -> None:
    """With one run per task the resamples cannot mix tasks: the interval is the point."""
    scores = np.array([[1.0, 10.0, 100.0]])
    interval = bootstrap_ci(scores, keyed_rng(0, "strata"), statistic=mean_statistic, reps=300)
    assert interval.low == interval.high == pytest.approx(37.0)


def test_paired_difference_cancels_what_the_seeds_share() -> None:
    x = np.random.default_rng(3).normal(10.0, 5.0, size=(10, 2))
    interval = paired_difference_ci(x, x + 1.0, keyed_rng(0, "paired"), reps=500)
    assert interval.point == pytest.approx(-1.0)
    assert interval.low == pytest.approx(-1.0) and interval.high == pytest.approx(-1.0)
    assert interval.below_zero and interval.excludes_zero


@pytest.mark.parametrize(
    ("x", "y", "lower_is_better", "expected"),
    [
        ([3, 4], [1, 2, 3], False, 5.5 / 6),  # pairs won: 3>1, 3>2, 3=3 (half), 4 beats all
        ([1, 2, 3], [2], False, 0.5),  # one win, one tie, one loss
        ([1, 2], [3, 4], True, 1.0),  # strictly lower and lower is better
        ([1, 2], [3, 4], False, 0.0),
        ([[1, 5], [2, 6]], [[3, 5], [4, 6]], True, 0.75),  # task 1: 1.0, task 2: ties and a win
    ],
)
def test_probability_of_improvement_matches_hand_computed_values(
    x, y, lower_is_better, expected
) -> None:
    assert probability_of_improvement(x, y, lower_is_better) == pytest.approx(expected)


def test_probability_of_improvement_is_complementary_and_half_against_itself() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1)
    assert probability_of_improvement(x, x) == pytest.approx(0.5)


def test_strictly_better_runs_give_probability_one_with_a_degenerate_interval() -> None:
    rng = np.random.default_rng(5)
    y = rng.uniform(1.0, 2.0, size=(5, 3))
    x = rng.uniform(0.0, 0.9, size=(5, 3))
    interval = probability_of_improvement_ci(x, y, keyed_rng(0, "poi"), lower_is_better=True)
    assert (interval.point, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_performance_profile_matches_hand_computed_values_and_is_monotone() -> None:
    scores = np.array([[1.0, 10.0], [2.0, 20.0]])
    assert performance_profile(scores, [1.5], lower_is_better=True) == pytest.approx([0.25])
    assert performance_profile(scores, [1.5], lower_is_better=False) == pytest.approx([0.75])
    rng = np.random.default_rng(6)
    scores = rng.exponential(size=(8, 4))
    taus = np.linspace(0.0, 5.0, 50)
    rising = performance_profile(scores, taus, lower_is_better=True)
    falling = performance_profile(scores, taus, lower_is_better=False)
    assert np.all(np.diff(rising) >= 0) and np.all(np.diff(falling) <= 0)
    assert rising[0] == 0.0 and rising[-1] == 1.0


def test_profile_bands_contain_the_profile() -> None:
    scores = np.random.default_rng(7).exponential(size=(8, 4))
    taus = np.linspace(0.0, 3.0, 20)
    profile, low, high = performance_profile_ci(scores, taus, keyed_rng(0, "band"), reps=300)
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iqm([]), "n_runs, n_tasks"),
        (lambda: iqm([1.0, float("nan")]), "^scores must be finite"),
        (lambda: bootstrap_ci([1.0], keyed_rng(0), reps=0), ">= 1"),
        (lambda: paired_difference_ci([1, 2], [1, 2, 3], keyed_rng(0)), "same shape"),
        (lambda: probability_of_improvement([[1, 2]], [[1, 2, 3]]), "same tasks"),
        (lambda: bootstrap_ci([1.0, 2.0], keyed_rng(0), confidence=1.5), "confidence"),
    ],
)
def test_bad_input_is_refused_clearly(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_an_interval_serialises_its_three_numbers() -> None:
    assert Interval(1.0, 0.5, 2.0).to_dict() == {"point": 1.0, "low": 0.5, "high": 2.0}


def test_the_improvement_interval_has_a_width_and_higher_is_better_by_default() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(1.0, 1.0, size=(8, 3)), rng.normal(0.0, 1.0, size=(8, 3))
    interval = probability_of_improvement_ci(x, y, keyed_rng(0, "width"), reps=500)
    assert interval.point == probability_of_improvement(x, y) > 0.5
    assert interval.low < interval.point < interval.high


def test_a_run_at_the_threshold_counts_as_at_or_below_it() -> None:
    scores = np.array([[1.0, 10.0], [2.0, 20.0]])
    assert performance_profile(scores, [2.0], lower_is_better=True) == pytest.approx([0.5])
    assert performance_profile(scores, [2.0], lower_is_better=False) == pytest.approx([0.5])


@pytest.mark.parametrize("lower_is_better", [False, True])
def test_profile_bands_are_of_the_profile_asked_for(lower_is_better: bool) -> None:
    scores = np.random.default_rng(9).exponential(size=(8, 4))
    taus = np.linspace(0.0, 3.0, 20)
    kwargs = {"lower_is_better": True} if lower_is_better else {}
    profile, low, high = performance_profile_ci(scores, taus, keyed_rng(0, "b"), reps=300, **kwargs)
    np.testing.assert_array_equal(profile, performance_profile(scores, taus, lower_is_better))
    assert low.shape == high.shape == taus.shape
    assert np.all(low <= profile + 1e-12) and np.all(profile <= high + 1e-12)
    assert np.any(low < high)


def test_a_never_worse_controller_has_an_interval_never_below_one_half() -> None:
    """Ties count half in every replicate: with no loss, no replicate is below 0.5."""
    x, y = np.array([0.0, 0.0, 0.0, 1.0]), np.zeros(4)
    interval = probability_of_improvement_ci(x, y, keyed_rng(0, "ties"), reps=2000)
    assert interval.low >= 0.5 and interval.high > 0.5


def test_intervals_are_the_percentiles_of_the_bootstrap_replicates() -> None:
    x = np.random.default_rng(10).exponential(size=(12, 1))
    interval = bootstrap_ci(x, keyed_rng(0, "pct"), statistic=mean_statistic, reps=1000)
    indices = keyed_rng(0, "pct").integers(0, 12, size=(1000, 12, 1))
    replicates = np.take_along_axis(x[np.newaxis], indices, axis=1).mean(axis=(1, 2))
    assert (interval.low, interval.high) == tuple(np.percentile(replicates, [2.5, 97.5]))


def test_bounded_memory_blocks_draw_the_same_replicates(monkeypatch) -> None:
    x = np.random.default_rng(11).exponential(size=(6, 2))
    whole = bootstrap_ci(x, keyed_rng(0, "blocks"), reps=500)
    monkeypatch.setattr("eval.stats._BLOCK_VALUES", 7 * x.size)  # blocks of 7 replicates
    assert bootstrap_ci(x, keyed_rng(0, "blocks"), reps=500) == whole


def test_default_replicates() -> None:
    x, y = np.random.default_rng(12).normal(size=(2, 40, 2))  # no ties at the percentiles
    taus = [0.0, 1.0]
    assert bootstrap_ci(x, keyed_rng(0)) == bootstrap_ci(x, keyed_rng(0), reps=10_000)
    assert paired_difference_ci(x, y, keyed_rng(0)) == paired_difference_ci(
        x, y, keyed_rng(0), reps=10_000
    )
    assert probability_of_improvement_ci(x, y, keyed_rng(0)) == probability_of_improvement_ci(
        x, y, keyed_rng(0), reps=10_000
    )
    default = performance_profile_ci(x, taus, keyed_rng(0))
    np.testing.assert_array_equal(default, performance_profile_ci(x, taus, keyed_rng(0), reps=2000))


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_a_confidence_of_zero_or_one_is_refused(confidence: float) -> None:
    with pytest.raises(ValueError, match=f"confidence must be in \\(0, 1\\), got {confidence}"):
        bootstrap_ci([1.0, 2.0], keyed_rng(0), confidence=confidence)
    assert bootstrap_ci([1.0, 2.0], keyed_rng(0), reps=1).point == 1.5  # one replicate is enough


@pytest.mark.parametrize(
    ("cost", "expected", "side"),
    [
        (1.0, 3.0, 0),  # the cheapest point
        (1.5, 2.0, 0),  # halfway to the next frontier point
        (2.5, 0.75, 0),  # the dominated point (2.2, 2.5) is skipped
        (3.0, 0.5, 0),
        (0.5, 3.0, -1),  # cheaper than any point: at least the cheapest point's budget
        (3.5, 0.5, 1),  # dearer: at most the dearest point's
    ],
)
def test_frontier_joins_the_undominated_points(cost: float, expected: float, side: int) -> None:
    costs, spent = [3.0, 1.0, 2.2, 2.0], [0.5, 3.0, 2.5, 1.0]
    assert frontier_at(cost, costs, spent) == (pytest.approx(expected), side)


def test_a_frontier_keeps_the_cheapest_of_points_spending_the_same() -> None:
    # (4, 3) spends no less than (2, 3): the frontier ends at cost 2, so cost 3 lies above it.
    assert frontier_at(3.0, [1.0, 2.0, 4.0], [5.0, 3.0, 3.0]) == (3.0, 1)


def _gap_of(spent: list[float] | np.ndarray, **kwargs) -> object:
    """The gap of runs spending ``spent`` at cost 0 to a frontier of one point (0, 0)."""
    n = len(spent)
    flat = np.zeros((1, n))
    return frontier_gap_ci(spent, np.zeros(n), flat, flat, keyed_rng(0, "g"), **kwargs)[0]


def test_a_frontier_gap_resamples_every_seed() -> None:
    # Two seeds: replicates (0, 0), (0, 10) and (10, 10), the first and last 1 in 4 each.
    gap = _gap_of([0.0, 10.0])
    assert (gap.point, gap.low, gap.high) == (5.0, 0.0, 10.0)
    wide = _gap_of(np.arange(20.0))  # replicates of 20 seeds each, drawn from all 20
    assert wide.point == 9.5 and wide.low < 8.5 and wide.high > 10.5
    assert wide.high - wide.low < 8.0


def _runs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 1.0, size=(3, 10))


#: Each bootstrap with the replicates it draws by default (the docstrings' and the report's).
DEFAULT_REPS = {
    "bootstrap_ci": (10_000, lambda rng, **kw: bootstrap_ci(_runs(0), rng, **kw)),
    "paired_difference_ci": (
        10_000,
        lambda rng, **kw: paired_difference_ci(_runs(0), _runs(1), rng, **kw),
    ),
    "probability_of_improvement_ci": (
        10_000,
        lambda rng, **kw: probability_of_improvement_ci(_runs(0), _runs(1), rng, **kw),
    ),
    "performance_profile_ci": (
        2_000,
        lambda rng, **kw: performance_profile_ci(_runs(0), [1.0, 2.0], rng, **kw),
    ),
    "frontier_gap_ci": (
        10_000,
        lambda rng, **kw: frontier_gap_ci(
            _runs(0)[0], np.zeros(10), np.zeros((1, 10)), np.zeros((1, 10)), rng, **kw
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(DEFAULT_REPS))
def test_each_bootstrap_draws_its_documented_replicates_by_default(name: str) -> None:
    """Told by what the draws leave of the generator: the same as with the documented number,
    not one replicate more."""
    reps, interval = DEFAULT_REPS[name]
    by_default, documented, one_more = (keyed_rng(0, name) for _ in range(3))
    interval(by_default)
    interval(documented, reps=reps)
    interval(one_more, reps=reps + 1)
    after = by_default.random()
    assert after == documented.random() and after != one_more.random()


def test_frontier_gap_is_paired_by_seed_and_bounded_outside_the_range() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.3, size=8)  # what the seeds share: cancels when paired
    costs = np.array([[1.0] * 8, [3.0] * 8])
    frontier = np.array([4.0 + noise, 2.0 + noise])
    below, side = frontier_gap_ci(1.5 + noise, [2.0] * 8, frontier, costs, keyed_rng(0, "g"))
    assert below.point == pytest.approx(-1.5) and below.high < 0.0 and side == 0
    above, _ = frontier_gap_ci(3.5 + noise, [2.0] * 8, frontier, costs, keyed_rng(0, "g"))
    assert above.low > 0.0
    dearer, side = frontier_gap_ci(1.0 + noise, [5.0] * 8, frontier, costs, keyed_rng(0, "g"))
    assert dearer.point == pytest.approx(-1.0) and side == 1  # a lower bound: inconclusive
    message = (
        r"frontier points must be finite \(n_points, 8\) arrays, one run per seed of the "
        r"controller, got \(2, 4\)$"
    )
    with pytest.raises(ValueError, match=message):
        frontier_gap_ci([1.0] * 8, [2.0] * 8, frontier[:, :4], costs[:, :4], keyed_rng(0, "g"))
