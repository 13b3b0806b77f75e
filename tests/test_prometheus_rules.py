"""The rules of `budgetpilot slo rules`, evaluated by a real Prometheus scraping the engine twin,
agree with the budget engine fed the same traffic as request events.

The twin runs at speed 1 against the wall clock (the test steps it one simulated second per
wall second), so that Prometheus's wall-clock scrapes and rule evaluations see the simulated
time one to one: simulated second ``sim0 + k`` is on the pages from wall second ``wall0 + k``.
The spec's period is one day, which scales the burn-rate windows by 1/30 (5m -> 10s, 30m -> 1m,
1h -> 2m): the page alert (14.4x over the 1h and 5m windows) then acts within seconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs.twin import EngineTwin
from slo import BudgetEngine
from slo.prometheus_server import scrape_configs
from slo.rules import render_rules
from slo.spec import load_spec

pytestmark = pytest.mark.slow

SCRAPE_S = 1.0  # scrape and evaluation interval of the test's Prometheus
SPEC_FILE = Path(__file__).parents[1] / "slo" / "specs" / "default.yaml"


def short_period_spec():
    """The default spec over a one-day period at one-second resolution."""
    data = yaml.safe_load(SPEC_FILE.read_text())
    data["budgetpilot"].update(period="1d", resolution="1s")
    return load_spec(data)


def _wait_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


class _Run:
    """The twin stepped in wall time, the engine fed its events, snapshots by wall second."""

    def __init__(self, twin: EngineTwin, engine: BudgetEngine) -> None:
        self.twin, self.engine = twin, engine
        self.sim0 = twin.now
        self.wall0 = math.ceil(time.time()) + 1.0
        self.snapshots: dict[float, object] = {}
        self.totals: dict[float, np.ndarray] = {}

    def advance(self, seconds: int, knobs: dict | None = None) -> None:
        for _ in range(seconds):
            k = round(self.twin.now - self.sim0) + 1
            _wait_until(self.wall0 + k)
            if knobs:
                self.twin.set_knobs(knobs)
                knobs = None
            self.engine.ingest_events(self.twin.step(1.0))
            self.engine.advance_to(self.sim0 + k)
            self.snapshots[self.wall0 + k] = self.engine.snapshot()
            self.totals[self.wall0 + k] = self.engine.window_counts()[1]

    def first_page(self, slo: int) -> float | None:
        times = [t for t, s in sorted(self.snapshots.items()) if s.page[slo]]
        return times[0] if times else None


@pytest.fixture(scope="module")
def spec():
    return short_period_spec()


def test_recording_rules_and_page_alert_agree_with_the_engine(prometheus_server, tmp_path, spec):
    """Burn rates of the recording rules match the engine's over the same traffic, and the page
    alert of availability fires in Prometheus when the engine's does.

    Tolerance of the burn rates: Prometheus's ``rate()`` extrapolates each series' increase
    between its first and last sample in the window to the window's edges, by the same factor
    for a histogram's bucket and its count (and for a counter's good and bad series), which
    are scraped together; the factor cancels in the error ratio. What remains is which events
    the window holds: the samples span the window less up to one scrape interval at each edge,
    and the pages lag the engine by up to one tick, so at most ``2 (scrape + tick) = 4 s`` of
    a 60 s window's events differ: an error ratio within about 7 % (10 % allowed) of the
    engine's, plus one event's weight in the window (for ratios near zero).
    """
    twin = EngineTwin("steady", seed=3, speed=0, spec=spec)
    try:
        url = twin.start()
        rules = tmp_path / "rules.yaml"
        rules.write_text(render_rules(spec)[0])
        configs = scrape_configs(url, twin.engines(), scrape_interval=f"{SCRAPE_S:g}s")
        server = prometheus_server(configs, [rules], evaluation_interval=f"{SCRAPE_S:g}s")
        engine = BudgetEngine(spec, start_time=twin.now)
        run = _Run(twin, engine)
        run.advance(20)
        # Admission at half the nominal capacity: rejections burn the availability budget.
        run.advance(65, knobs={"admission_limit": 0.5})
    finally:
        twin.close()
    _wait_until(max(run.snapshots) + 3 * SCRAPE_S)  # the last evaluations

    availability = engine.slo_names.index("availability")
    compared = 0
    for window in ("1m", "2m"):
        column = engine.windows.index({"1m": "30m", "2m": "1h"}[window])
        for at in (max(run.snapshots) - 10, max(run.snapshots)):
            snapshot = run.snapshots[at]
            totals = run.totals[at]
            for result in server.query(f"slo:sli_error:ratio_rate{window}", at=at):
                slo = engine.slo_names.index(result["metric"]["sloth_slo"])
                if engine.spec.engine_slos[slo].sli.llm.kind == "fairness":
                    continue  # sliding slices in the rules, disjoint ones in the engine
                observed = float(result["value"][1]) / (1.0 - engine.objectives[slo])
                expected = float(snapshot.burn_rates[slo, column])
                one_event = 1.0 / max(1.0, float(totals[slo, column]))
                slack = 0.1 * expected + one_event / (1.0 - engine.objectives[slo])
                assert abs(observed - expected) <= slack, (
                    f"{result['metric']['sloth_slo']} {window} at +{at - run.wall0:.0f} s: "
                    f"Prometheus burn rate {observed:.3f}, engine {expected:.3f}"
                )
                compared += 1
    assert compared >= 2 * 2 * 6
    assert run.snapshots[max(run.snapshots)].burn_rates[availability, 1] > 14.4

    engine_page = run.first_page(availability)
    assert engine_page is not None and engine_page > run.wall0 + 20
    alerts = server.alerts()
    fired = [
        a
        for a in alerts
        if a["labels"]["alertname"] == "LLMAvailabilityBudgetBurn"
        and a["labels"]["sloth_severity"] == "page"
    ]
    assert fired, f"no availability page in Prometheus; alerts: {alerts}"
    active_at = np.datetime64(fired[0]["activeAt"].rstrip("Z"), "ms").astype(float) / 1e3
    # Prometheus sees the traffic at its next scrape, the recording rules at their next
    # evaluation, the alert (another rule group, reading the recorded ratios) at its next one;
    # the windows' edges may tip it one interval earlier. Half an interval more for the
    # groups' own scheduling (a CI run saw +3.09 s).
    assert engine_page - SCRAPE_S <= active_at <= engine_page + 3.5 * SCRAPE_S, (
        f"page: engine at +{engine_page - run.wall0:.2f} s, "
        f"Prometheus at +{active_at - run.wall0:.2f} s"
    )
