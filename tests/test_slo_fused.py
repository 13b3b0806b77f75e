"""The fused (numba) classification counts exactly what the numpy SLI classifiers count."""

from __future__ import annotations

import numpy as np
import pytest

from slo import default_spec, load_spec
from slo.fused import FusedClassifier
from slo.sli import EventBatch, SLIClassifier
from slo.synthetic import synthetic_events

# One SLO per variant of every request SLI, some with selectors (tenants, tiers, models).
_VARIANTS = [
    ({"kind": "ttft", "threshold_s": 0.5}, {}),
    ({"kind": "ttft", "threshold_s": 1.0}, {"tenant": [0, 2]}),
    ({"kind": "itl", "threshold_s": 0.1, "per": "token"}, {}),
    ({"kind": "itl", "threshold_s": 0.05, "per": "token"}, {"tier": [1]}),
    ({"kind": "itl", "threshold_s": 0.1, "per": "request"}, {}),
    ({"kind": "e2e", "threshold_s": 20.0}, {"model": ["fast"]}),
    ({"kind": "normalized_latency", "threshold_s": 0.2}, {}),
    ({"kind": "availability", "bad_outcomes": ["rejected", "failed"]}, {"intended_tier": [0]}),
    ({"kind": "availability"}, {"tier": [-1, 0]}),
    ({"kind": "quality", "mode": "tier"}, {}),
    ({"kind": "quality", "mode": "loss", "max_loss": 0.1}, {"tenant": [1]}),
    ({"kind": "context"}, {}),
    ({"kind": "context", "truncation": False, "max_preemptions": 0, "length_cut": False}, {}),
    ({"kind": "context", "truncation": True, "max_preemptions": None, "length_cut": True}, {}),
    ({"kind": "streaming", "pace_s": 0.05}, {"model": ["strong"], "tier": [0, 1]}),
]


def _spec():
    slos = [
        {"name": f"slo-{i}", "objective": 99, "sli": {"llm": llm}, "selectors": selectors}
        for i, (llm, selectors) in enumerate(_VARIANTS)
    ]
    return load_spec(
        {
            "version": "prometheus/v1",
            "service": "fused-test",
            "budgetpilot": {"models": {"strong": 0, "fast": 1}},
            "slos": slos,
        }
    )


@pytest.mark.parametrize("spec", [default_spec(), _spec()], ids=["default", "variants"])
@pytest.mark.parametrize("n_buckets", [1, 7])
def test_fused_counts_equal_numpy_classifiers(spec, n_buckets):
    events = synthetic_events(
        np.random.default_rng(n_buckets), 5000, 0.0, 100.0, n_tenants=3, slowdown=3.0
    )
    classifiers = [SLIClassifier(s, spec) for s in spec.slos if s.sli.llm.kind != "fairness"]
    fused = FusedClassifier(classifiers, spec, range(len(classifiers)))
    bucket = np.random.default_rng(0).integers(0, n_buckets, len(events))
    counts = fused.counts(EventBatch(events), bucket, n_buckets, 2 * len(classifiers))
    for j, classifier in enumerate(classifiers):
        good, counted = classifier.classify(EventBatch(events))
        for b in range(n_buckets):
            in_bucket = bucket == b
            expected = (np.sum(good * in_bucket), np.sum(counted * in_bucket))
            assert tuple(counts[b, 2 * j : 2 * j + 2]) == expected, classifier.slo.name
    assert counts[:, 1::2].sum() > 0
