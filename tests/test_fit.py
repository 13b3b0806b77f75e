"""`budgetpilot fit`: a fleet file fitted to the metrics of a fleet it does not know.

The engine twin serves a fleet and traffic the fitter is not told (3 strong and 1 cheap
replica, a rate drawn by the scenario, lognormal lengths of another scale than the reference
fleet's). Its pages, rendered every 15 simulated seconds, are saved as scrapes and, with
timestamps ending now, backfilled into a real Prometheus (how the bootstrap tests give it
history): ``fit`` reads them back from either source.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from envs.fit import FitError, FitOptions, FleetFit, fit_fleet
from envs.fit_cli import parse_time
from envs.fit_report import WARMUP_S, aligned, report_markdown
from envs.sim.config import ConfigError, SimConfig
from envs.sim.simulator import Simulator
from envs.sim.workload import Marginal
from envs.twin import EngineTwin
from eval.cli import app
from slo.history import OpenMetricsHistory, backfill
from slo.metrics import load_mapping
from slo.series import ScrapesSource, SourceError, save_scrape

REFERENCE_FLEET = Path(__file__).parents[1] / "examples" / "fleets" / "reference.yaml"
MODELS = ["--model", "strong=llama-3-8b", "--model", "fast=llama-3.2-1b"]
PROMPT_MEAN, OUTPUT_MEAN = 1600.0, 150.0
STEP_S = 15.0
runner = CliRunner()


def unknown_fleet(path: Path) -> Path:
    """The reference fleet with one more strong replica and lognormal lengths of another scale
    (capacity given, so that the twin does not measure it)."""
    fleet = yaml.safe_load(REFERENCE_FLEET.read_text())
    fleet["pools"][0]["replicas"] = 3
    fleet["capacity_rps"] = 20.0
    fleet["workload"]["lengths"] = {
        "prompt": {"mean": PROMPT_MEAN, "sigma": 1.1},
        "output": {"mean": OUTPUT_MEAN, "sigma": 0.8},
    }
    path.write_text(yaml.safe_dump(fleet))
    return path


class TwinRun:
    """The twin stepped ``minutes`` in scrapes of :data:`STEP_S`: its pages saved in
    ``scrapes/`` at times ``t0 + k STEP_S`` and kept as OpenMetrics history."""

    def __init__(self, twin: EngineTwin, directory: Path, minutes: float, t0: float) -> None:
        self.scrapes = directory / "scrapes"
        self.scrapes.mkdir()
        self.history = OpenMetricsHistory()
        self.t0, self.t1 = t0, t0 + minutes * 60
        targets = {r.name: {"replica": r.name, "pool": r.pool} for r in twin.replicas}
        arrivals0 = twin.sim.arrivals
        batches = []
        for k in range(round(minutes * 60 / STEP_S) + 1):
            if k:
                batches.append(twin.step(STEP_S))
            t = t0 + k * STEP_S
            pages = {twin.metrics_text(name): labels for name, labels in targets.items()}
            save_scrape(self.scrapes, t, pages)
            for text, labels in pages.items():
                self.history.add(t, text, {**labels, "job": "engines"})
        self.events = np.concatenate(batches)
        self.rate = (twin.sim.arrivals - arrivals0) / (self.t1 - self.t0)


def ttft_percentiles(events: np.ndarray) -> np.ndarray:
    """TTFT p50 and p99 of the requests that got a first token from a replica."""
    ttft = events["ttft_s"][~np.isnan(events["ttft_s"]) & (events["tier"] >= 0)]
    return np.percentile(ttft, [50, 99])


def fit_json(*args: str) -> dict:
    result = runner.invoke(app, ["fit", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fit_recovers_an_unknown_fleet_from_prometheus_and_scrapes(prometheus_server, tmp_path):
    """Rate within 5%, mean lengths within 10%, pools and replicas exactly; the fitted fleet's
    simulated TTFT p50 and p99 within 15% of the twin's; both sources give the same fit."""
    twin = EngineTwin("steady", seed=11, speed=0, fleet=unknown_fleet(tmp_path / "fleet.yaml"))
    end = math.floor(time.time() / STEP_S) * STEP_S
    run = TwinRun(twin, tmp_path, minutes=20, t0=end - 20 * 60)
    with (tmp_path / "history.om.txt").open("w") as out:
        run.history.write(out)
    backfill(tmp_path / "history.om.txt", tmp_path / "tsdb-0")
    server = prometheus_server([])  # the fixture's first server stores in tmp_path/tsdb-0

    out = tmp_path / "fitted.yaml"
    interval = ["--start", f"{run.t0:.0f}", "--end", f"{run.t1:.0f}", "--step", f"{STEP_S:g}"]
    figures = fit_json("--prometheus", server.url, *interval, "-o", str(out), *MODELS)
    scrapes_out = str(tmp_path / "s.yaml")
    from_scrapes = fit_json(
        "--scrapes", str(run.scrapes), "-o", scrapes_out, "--no-calibrate", *MODELS
    )

    assert figures["rate_rps"] == pytest.approx(run.rate, rel=0.05)
    assert figures["prompt_tokens_mean"] == pytest.approx(PROMPT_MEAN, rel=0.10)
    assert figures["output_tokens_mean"] == pytest.approx(OUTPUT_MEAN, rel=0.10)
    assert figures["pools"] == {"strong": 3, "cheap": 1}
    assert not any("varies" in note for note in figures["notes"])  # steady: Poisson arrivals
    for key in ("rate_rps", "prompt_tokens_mean", "output_tokens_mean", "pools"):
        assert from_scrapes[key] == pytest.approx(figures[key], rel=0.01), key

    fitted = SimConfig.from_yaml(out)
    sim = Simulator(fitted, seed=0)
    sim.advance(WARMUP_S)
    simulated = ttft_percentiles(sim.advance(WARMUP_S + run.t1 - run.t0))
    observed = ttft_percentiles(run.events)
    assert simulated == pytest.approx(observed, rel=0.15), (simulated, observed)

    before = ["--start", f"{run.t0 - 7200:.0f}", "--end", f"{run.t0 - 3600:.0f}"]
    refused = {
        "no samples of vllm:request_success_total between": before,
        "answered HTTP 400: exceeded maximum resolution": [*interval[:4], "--step", "0.01"],
    }
    for message, args in refused.items():
        result = runner.invoke(
            app, ["fit", "--prometheus", server.url, *args, "-o", str(tmp_path / "x.yaml")]
        )
        assert result.exit_code == 2 and message in result.stderr, result.output

    report = out.with_suffix(".calibration.md").read_text()
    assert re.search(r"\| ttft \| p99 \| [\d.]+ \| [\d.]+ \| [+-][\d.]+% \|", report), report
    assert out.with_suffix(".calibration.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory) -> Path:
    """Five minutes of the reference twin's scrapes."""
    directory = tmp_path_factory.mktemp("twin")
    twin = EngineTwin("steady", seed=3, speed=0)
    return TwinRun(twin, directory, minutes=5, t0=1_765_000_000.0).scrapes


def rewritten(scrapes: Path, directory: Path, edit) -> Path:
    """A copy of the scrapes with every line passed through ``edit`` (None drops it)."""
    directory.mkdir()
    for path in scrapes.iterdir():
        lines = [edit(line) for line in path.read_text().splitlines()]
        (directory / path.name).write_text("\n".join(x for x in lines if x is not None) + "\n")
    return directory


def fit_of(directory: Path, **options) -> FleetFit:
    options = {"mapping": load_mapping("vllm")} | options
    models = {"strong": "llama-3-8b", "fast": "llama-3.2-1b"}
    return fit_fleet(ScrapesSource(directory), FitOptions(models=models, **options))


def test_sglang_fleet_is_fitted_from_its_own_names(scrapes, tmp_path):
    """SGLang's request counter and token histograms give the fit vLLM's do (same traffic)."""
    twin = EngineTwin("steady", seed=3, speed=0, mapping="sglang")
    sglang = TwinRun(twin, tmp_path, minutes=5, t0=1_765_000_000.0).scrapes
    fitted = fit_of(sglang, mapping=load_mapping("sglang"))
    vllm = fit_of(scrapes)
    assert fitted.rate == pytest.approx(vllm.rate, rel=1e-6)
    assert fitted.lengths["prompt"].source == "sglang:prompt_tokens_histogram"
    for which in ("prompt", "output"):
        assert fitted.lengths[which].mean == pytest.approx(vllm.lengths[which].mean, rel=1e-6)


def test_twin_pages_hold_vllm_length_histograms(scrapes):
    """Prompt and generation lengths as vLLM's 1-2-5 histograms, their sums equal to the token
    counters, their counts to the finished requests."""
    text = max(scrapes.iterdir()).read_text()
    bounds = re.findall(
        r'vllm:request_prompt_tokens_bucket\{.*le="([^"]+)".*replica="strong-0"', text
    )
    assert bounds[:6] == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0"] and bounds[-1] == "+Inf"

    def value(sample: str) -> float:
        return float(
            re.search(
                rf'^{re.escape(sample)}\{{[^}}]*replica="strong-0"[^}}]*\}} (\S+)', text, re.M
            )[1]
        )

    assert value("vllm:request_prompt_tokens_sum") == value("vllm:prompt_tokens_total") > 0
    assert value("vllm:request_generation_tokens_sum") == value("vllm:generation_tokens_total")
    finished = sum(
        float(v)
        for v in re.findall(
            r'^vllm:request_success_total\{[^}]*replica="strong-0"[^}]*\} (\S+)', text, re.M
        )
    )
    assert value("vllm:request_prompt_tokens_count") == finished


def test_sglang_twin_names_its_token_histograms():
    twin = EngineTwin("steady", seed=3, speed=0, mapping="sglang")
    twin.step(30.0)
    text = twin.metrics_text("strong-0")
    assert 'sglang:prompt_tokens_histogram_bucket{le="100.0"' in text
    assert 'sglang:generation_tokens_histogram_bucket{le="1200.0"' in text
    assert "sglang:prompt_tokens_total" in text


@pytest.mark.parametrize(
    ("cdf", "sigma"), [(None, 1.1), ({100.0: 0.0, 500.0: 0.3, 2000.0: 0.9, 5000.0: 1.0}, 0.8)]
)
def test_length_distribution_keeps_its_mean(cdf, sigma):
    marginal = Marginal(1200.0, sigma, cdf)
    from envs.sim.workload import LengthModel

    model = LengthModel.from_marginals(marginal, Marginal(90.0, 0.5))
    prompt, output = model.sample(np.random.default_rng(0), 400_000)
    assert prompt.mean() == pytest.approx(1200.0, rel=0.02)
    assert output.mean() == pytest.approx(90.0, rel=0.02)
    if cdf:
        assert prompt.min() >= 100 and prompt.max() <= 5000 * 1.3  # scaled to the mean


def test_fleet_file_refuses_a_decreasing_cdf(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "workload:\n  kind: poisson\n  rate: 3\n  lengths:\n"
        "    prompt: {mean: 500, sigma: 1, cdf: {100: 0.5, 200: 0.4}}\n"
        "    output: {mean: 50, sigma: 1}\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"line 5, workload\.lengths\.distributions\.prompt\.cdf: .* must not decrease",
    ):
        SimConfig.from_yaml(path)


def test_missing_length_histograms_fall_back_to_the_token_counters(scrapes, tmp_path):
    no_histograms = rewritten(
        scrapes,
        tmp_path / "a",
        lambda line: (
            None if "request_prompt_tokens" in line or "request_generation_tokens" in line else line
        ),
    )
    fitted = fit_of(no_histograms)
    notes = "\n".join(fitted.notes)
    assert "prompt lengths: no vllm:request_prompt_tokens histogram" in notes
    assert "mean from vllm:prompt_tokens_total / requests, spread sigma=1 assumed" in notes
    full = fit_of(scrapes)
    assert fitted.lengths["prompt"].mean == pytest.approx(full.lengths["prompt"].mean, rel=0.01)

    nothing = rewritten(
        no_histograms, tmp_path / "b", lambda line: None if "tokens_total" in line else line
    )
    notes = "\n".join(fit_of(nothing).notes)
    assert (
        "output lengths: no vllm:request_generation_tokens histogram in the range nor token counter"
        in notes
    )
    assert "'azure-conv' length model used instead" in notes


def test_series_without_pool_label_make_one_pool_per_model(scrapes, tmp_path):
    unlabelled = rewritten(
        scrapes, tmp_path / "a", lambda line: re.sub(r',?pool="[^"]*"', "", line)
    )
    fitted = fit_of(unlabelled)
    assert (
        "no series carries the pool label 'pool' (--pool-label); one pool per 'model_name'"
        in "\n".join(fitted.notes)
    )
    assert {p.name: p.replicas for p in fitted.config.pools} == {"strong": 2, "fast": 1}
    with pytest.raises(FitError, match="of .* series carry the pool label 'pool', not this one"):
        partly = rewritten(
            scrapes, tmp_path / "b", lambda line: re.sub(r',?pool="cheap"', "", line)
        )
        fit_of(partly)
    assert fit_of(scrapes, pool_label="replica").config.pools[0].replicas == 1


def counter_scrapes(
    directory: Path, per_step: Sequence[float] | Mapping[str, Sequence[float]]
) -> Path:
    """Scrapes every :data:`STEP_S` of one replica's finished-request counter, growing by
    ``per_step[k - 1]`` requests up to scrape ``k``; given per tenant (a mapping), one counter
    per value of the ``tenant`` label."""
    directory.mkdir()
    counters = per_step if isinstance(per_step, Mapping) else {None: per_step}
    totals = {tenant: np.cumsum([0.0, *steps]) for tenant, steps in counters.items()}
    for k in range(len(next(iter(totals.values())))):
        samples = "".join(
            'vllm:request_success_total{model_name="strong",replica="a",pool="p"'
            + ("" if tenant is None else f',tenant="{tenant}"')
            + f"}} {finished[k]}\n"
            for tenant, finished in totals.items()
        )
        (directory / f"{k * STEP_S:.0f}.prom").write_text(
            f"# TYPE vllm:request_success_total counter\n{samples}"
        )
    return directory


def test_a_varying_rate_is_written_as_the_fleet_files_rate_curve(tmp_path):
    """10 requests/s for ten minutes, then 20: the fleet file (written by the command and read
    back) holds the mean and the curve in 5-minute blocks, and the simulator built from it
    draws arrivals that follow the blocks.

    Tolerance: the fitted blocks are exact (the counters grow evenly); the simulated counts per
    block are Poisson, 3,000 and 6,000 expected, so 4 standard deviations (220 and 310, 7% and
    5%) pass any seed while a flat rate at the mean (4,500 per block) fails by 1,500."""
    stepped = counter_scrapes(
        tmp_path / "scrapes", [15 * (10 if k < 40 else 20) for k in range(80)]
    )
    out = tmp_path / "fleet.yaml"
    figures = fit_json("--scrapes", str(stepped), "-o", str(out), "--no-calibrate", *MODELS)
    assert figures["rate_rps"] == pytest.approx(15.0)
    assert (
        "the arrival rate varies over the interval (10 to 20 requests/s in 5-minute blocks): "
        "the fleet file follows its curve (workload.rate_curve, 4 blocks repeating after 20 "
        "minutes)" in "\n".join(figures["notes"])
    )
    fitted = SimConfig.from_yaml(out)
    assert fitted.workload.rate == pytest.approx(15.0)
    assert fitted.workload.rate_curve.step_s == 300.0
    assert fitted.workload.rate_curve.rates == pytest.approx([10, 10, 20, 20])

    sim = Simulator(fitted, seed=4)
    counts = []
    for block_end in (300.0, 600.0, 900.0, 1200.0):
        before = sim.arrivals
        sim.advance(block_end)
        counts.append(sim.arrivals - before)
    expected = np.array([3000.0, 3000.0, 6000.0, 6000.0])
    assert np.all(np.abs(np.array(counts) - expected) < 4 * np.sqrt(expected)), counts

    # The calibration report's warm-up comes first: the curve then starts after it.
    warmed = Simulator(aligned(fitted, WARMUP_S), seed=4).workload
    times = warmed.generate(np.random.default_rng(5), 0.0, WARMUP_S + 1200.0)["t_arrival"]
    per_block = np.histogram(times, bins=WARMUP_S + np.arange(0.0, 1201.0, 300.0))[0]
    assert np.all(np.abs(per_block - expected) < 4 * np.sqrt(expected)), per_block


def test_a_steady_rate_stays_a_poisson_workload(tmp_path):
    """Poisson counts of 10 requests/s per 15 s scrape vary by ~3% between 5-minute blocks,
    far below the 25% that make a rate vary: no curve, no note."""
    noisy = np.random.default_rng(0).poisson(150.0, 80).astype(float)
    fitted = fit_of(counter_scrapes(tmp_path / "scrapes", list(noisy)))
    assert fitted.config.workload.rate_curve is None
    assert fitted.block_rates == pytest.approx(np.full(4, 10.0), rel=0.05)
    assert not any("varies" in note for note in fitted.notes)


#: Tenant A steady at 10 requests/s, tenant B at 2, 12 then 2 over three 5-minute blocks.
TENANT_RATES = {"A": [10.0, 10.0, 10.0], "B": [2.0, 12.0, 2.0]}


def poisson_tolerance(rates: np.ndarray, seconds: float = 300.0) -> np.ndarray:
    """4 Poisson standard deviations of the requests/s counted over ``seconds`` at ``rates``."""
    return 4 * np.sqrt(rates * seconds) / seconds


def test_a_tenants_varying_rate_is_written_as_its_own_curve(tmp_path):
    """Poisson counters of tenants A (10 requests/s) and B (2, 12, 2) per 15-s scrape: the fit
    recovers each tenant's block rates within 4 Poisson standard deviations of a 5-minute block
    (0.73 requests/s at 10, 0.33 at 2, 0.80 at 12: 7%, 16%, 7%). B's rate varies, so its curve
    is written; A's does not (its noise is ~2%), so it keeps a steady rate, not a flat curve;
    the fleet's 12, 22, 12 is the workload's curve. The fleet file, read back, draws each
    tenant's arrivals per block within 4 Poisson standard deviations of the fitted counts (219
    at 3,000, 98 at 600, 240 at 3,600), where B at its steady share would be off by 650."""
    noise = np.random.default_rng(7)
    per_step = {
        tenant: noise.poisson(np.repeat(rates, 20) * STEP_S).astype(float)
        for tenant, rates in TENANT_RATES.items()
    }
    stepped = counter_scrapes(tmp_path / "scrapes", per_step)
    out = tmp_path / "fleet.yaml"
    figures = fit_json("--scrapes", str(stepped), "-o", str(out), "--no-calibrate", *MODELS)
    assert figures["rate_curves"] == ["all", "strong/B"]
    notes = "\n".join(figures["notes"])
    assert "these tenants follow their own rate curve (tenants[].rate_curve), their share " in notes
    assert re.search(r"strong/B \([\d.]+ to [\d.]+ requests/s in 5-minute blocks\)", notes)
    assert "the others keep a steady rate: strong/A" in notes

    fit = fit_of(stepped)
    for tenant, rates in TENANT_RATES.items():
        fitted = fit.tenant_block_rates[f"strong/{tenant}"]
        assert np.all(np.abs(fitted - rates) < poisson_tolerance(np.array(rates))), fitted
    fleet = SimConfig.from_yaml(out)
    a, b = fleet.tenants
    assert a.rate_curve is None and b.rate_curve.step_s == 300.0
    assert b.rate_curve.rates == pytest.approx(fit.tenant_block_rates["strong/B"], abs=1e-6)
    assert fleet.workload.rate_curve.rates == pytest.approx(fit.block_rates, abs=1e-6)
    report = report_markdown(fit, [], "plot.png")
    assert re.search(r"\| strong/A \| [\d.]+ \| none \|", report)
    assert re.search(r"\| strong/B \| [\d.]+ \| [\d.]+ to [\d.]+ requests/s, 3 blocks of 5", report)
    assert re.search(r"\| all \| [\d.]+ \| [\d.]+ to [\d.]+ requests/s, 3 blocks of 5", report)

    requests = Simulator(fleet, seed=4).workload.generate(np.random.default_rng(5), 0.0, 900.0)
    block = (requests["t_arrival"] // 300.0).astype(int)
    for index, tenant in enumerate(TENANT_RATES):
        counts = np.bincount(block[requests["tenant"] == index], minlength=3)
        expected = 300.0 * fit.tenant_block_rates[f"strong/{tenant}"]
        assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), (tenant, counts)


@pytest.mark.parametrize(
    ("rates", "written"),
    [
        ({"A": [10.0, 20.0, 10.0], "B": [10.0, 20.0, 10.0]}, ["all"]),
        ({"A": [10.0, 2.0, 10.0], "B": [2.0, 10.0, 2.0]}, ["strong/A", "strong/B"]),
        ({"A": [10.0, 11.0, 10.0], "B": [10.0, 10.0, 11.0]}, []),
    ],
    ids=["rate-varies-mix-steady", "mix-varies-rate-steady", "both-steady"],
)
def test_tenant_curves_are_written_when_the_mix_changes(tmp_path, rates, written):
    """Exact counters (no noise) in three 5-minute blocks: a fleet whose rate varies but whose
    mix stays put needs only the workload's curve (each tenant keeps its share); a mix that
    changes under a steady total needs only the tenants' curves; a 10% change needs none."""
    per_step = {t: list(np.repeat(r, 20) * STEP_S) for t, r in rates.items()}
    fit = fit_of(counter_scrapes(tmp_path / "scrapes", per_step))
    assert sorted(fit.rate_curves()) == written
    notes = "\n".join(fit.notes)
    assert ("every tenant keeps its share of the whole interval" in notes) == (written == ["all"])
    for tenant in fit.config.tenants:
        if tenant.rate_curve is not None:
            assert tenant.rate_curve.rates == pytest.approx(rates[tenant.name[-1]])


def test_unknown_model_label_is_named(scrapes):
    with pytest.raises(FitError, match=r"model 'fast': unknown model 'fast'; .*--model fast=NAME"):
        fit_fleet(ScrapesSource(scrapes), FitOptions(load_mapping("vllm")))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--prometheus", "http://127.0.0.1:9", "--start", "0", "--end", "60"],
            "cannot reach Prometheus at http://127.0.0.1:9",
        ),
        (
            ["--prometheus", "http://127.0.0.1:9", "--start", "60", "--end", "60"],
            "empty range: --end (60.0) must come after --start (60.0)",
        ),
        (["--prometheus", "http://127.0.0.1:9"], "--prometheus needs the interval"),
        (["--start", "0"], "give --prometheus URL or --scrapes DIR"),
        (
            ["--prometheus", "http://x", "--start", "yesterday", "--end", "1"],
            "--start: expected Unix seconds or a date-time",
        ),
    ],
)
def test_bad_sources_are_named(args, message, tmp_path):
    result = runner.invoke(app, ["fit", *args, "-o", str(tmp_path / "f.yaml")])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "f.yaml").exists()


def test_bad_scrapes_are_named(scrapes, tmp_path):
    with pytest.raises(SourceError, match=r"0 scrape\(s\) between 1 and 2"):
        ScrapesSource(scrapes, 1, 2)
    (tmp_path / "latest.prom").write_text("x 1\n")
    with pytest.raises(SourceError, match="latest.prom: a scrape file is named by its Unix time"):
        ScrapesSource(tmp_path)
    (tmp_path / "latest.prom").unlink()
    (tmp_path / "1.prom").write_text("x{ 1\n")
    (tmp_path / "2.prom").write_text("x 1\n")
    with pytest.raises(SourceError, match=r"1\.prom: not Prometheus exposition text"):
        ScrapesSource(tmp_path)


def test_range_without_requests_is_an_error(scrapes, tmp_path):
    frozen = rewritten(scrapes, tmp_path / "a", lambda line: line)
    first = min(frozen.iterdir()).read_text()
    for path in frozen.iterdir():
        path.write_text(first)
    with pytest.raises(FitError, match="no request finished between"):
        fit_of(frozen)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1765000000", 1765000000.0),
        ("2025-12-06T05:46:40Z", 1765000000.0),
        ("2025-12-06T06:46:40+01:00", 1765000000.0),
    ],
)
def test_parse_time(value, seconds):
    assert parse_time(value, "--start") == pytest.approx(seconds)
