"""``eval.stats`` against the rliable package (and scipy, which rliable builds on) on shared
fixtures, so the statistics follow the convention they cite (Agarwal et al., NeurIPS 2021).

rliable 1.2 pins ``arch<8``, whose 7.x releases do not import with pandas 3: its bootstrap
(``rliable.library``) cannot be imported here, so the intervals are checked against scipy's
percentile bootstrap on one task (where the stratified bootstrap is the plain one), and the point
statistics against ``rliable.metrics``.
"""

from __future__ import annotations

import numpy as np
import pytest

rliable_metrics = pytest.importorskip("rliable.metrics", reason="rliable is in the dev extra")
scipy_stats = pytest.importorskip("scipy.stats", reason="scipy comes with rliable")

from eval.stats import (  # noqa: E402
    bootstrap_ci,
    iqm,
    keyed_rng,
    mean_statistic,
    performance_profile,
    probability_of_improvement,
)


def scores(n_runs: int, n_tasks: int, seed: int, ties: bool = False) -> np.ndarray:
    """Skewed scores ``(n_runs, n_tasks)``; with ``ties``, whole numbers that repeat."""
    rng = np.random.default_rng([seed, n_runs, n_tasks])
    values = rng.lognormal(0.0, 1.0, size=(n_runs, n_tasks)) * rng.uniform(1, 10, n_tasks)
    return np.round(values) if ties else values


SHAPES = [(n, 1) for n in range(1, 13)] + [(3, 2), (5, 3), (6, 4), (7, 5), (10, 11)]


@pytest.mark.parametrize(("n_runs", "n_tasks"), SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_iqm_and_mean_are_rliables(n_runs, n_tasks, ties):
    x = scores(n_runs, n_tasks, seed=0, ties=ties)
    assert iqm(x) == pytest.approx(rliable_metrics.aggregate_iqm(x), rel=1e-12)
    assert mean_statistic(x) == pytest.approx(rliable_metrics.aggregate_mean(x), rel=1e-12)


@pytest.mark.parametrize(("n_x", "n_y", "n_tasks"), [(1, 1, 1), (5, 5, 3), (4, 9, 2), (10, 3, 6)])
@pytest.mark.parametrize("ties", [False, True])
def test_probability_of_improvement_is_rliables(n_x, n_y, n_tasks, ties):
    x, y = scores(n_x, n_tasks, seed=1, ties=ties), scores(n_y, n_tasks, seed=2, ties=ties)
    expected = rliable_metrics.probability_of_improvement(x, y)
    assert probability_of_improvement(x, y) == pytest.approx(expected, rel=1e-12)
    # Lower is better: rliable's convention on negated scores.
    lower = rliable_metrics.probability_of_improvement(-x, -y)
    assert probability_of_improvement(x, y, lower_is_better=True) == pytest.approx(lower)


@pytest.mark.parametrize(("n_runs", "n_tasks"), [(5, 3), (10, 4)])
def test_performance_profile_is_rliables_score_distribution(n_runs, n_tasks):
    """rliable's run-score distribution: per tau, ``mean(scores > tau)`` per task, averaged over
    tasks (``rliable.library.score_distributions`` with ``run_score_deviation``)."""
    x = scores(n_runs, n_tasks, seed=3, ties=True)
    taus = np.linspace(0.0, x.max() + 1.0, 25)
    expected = [np.mean([np.mean(x[:, t] > tau) for t in range(n_tasks)]) for tau in taus]
    np.testing.assert_allclose(performance_profile(x, taus), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("statistic", "reference"),
    [
        (None, lambda s, axis: scipy_stats.trim_mean(s, 0.25, axis=axis)),
        (mean_statistic, lambda s, axis: np.mean(s, axis=axis)),
    ],
)
def test_one_task_intervals_are_scipys_percentile_bootstrap(statistic, reference):
    """On one task the stratified bootstrap is scipy's: the same 95 % percentile interval up to
    Monte Carlo error (20,000 replicates each; the bounds agree within 5 % of the width)."""
    x = scores(30, 1, seed=4)
    kwargs = {} if statistic is None else {"statistic": statistic}
    ours = bootstrap_ci(x, keyed_rng(0, "rliable"), reps=20_000, **kwargs)
    theirs = scipy_stats.bootstrap(
        (x[:, 0],),
        reference,
        n_resamples=20_000,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    width = theirs.high - theirs.low
    assert ours.point == pytest.approx(reference(x[:, 0], axis=None))
    assert abs(ours.low - theirs.low) < 0.05 * width
    assert abs(ours.high - theirs.high) < 0.05 * width
