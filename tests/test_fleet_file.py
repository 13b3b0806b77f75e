"""The fleet file: loading, errors by file, line and field, the example fleets, traffic from a
trace with a column mapping, and capacity measured per fleet and traffic, cached by content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.fleet_env import LLMFleetEnv
from envs.paths import EXAMPLE_FLEETS_DIR
from envs.scenarios import (
    NOMINAL_CAPACITY,
    SCENARIOS,
    TRAINING_SCENARIOS,
    fleet_config,
    poisson_stream,
)
from envs.sim import ConfigError, SimConfig, Simulator, simulator
from envs.sim.capacity import CACHE_ENV, capacity_key, fleet_capacity, with_load_resolved
from eval.cli import app

runner = CliRunner()
EXAMPLES = sorted(p.stem for p in EXAMPLE_FLEETS_DIR.glob("*.yaml"))
HF = Path(__file__).parent / "fixtures" / "hf"


@pytest.fixture(autouse=True)
def capacity_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test measures into its own cache folder (named by the environment variable)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> list[SimConfig]:
    """The fleets whose capacity was actually measured (not read from the cache)."""
    measured: list[SimConfig] = []
    real = simulator.measure_capacity

    def counting(config: SimConfig, **kwargs) -> float:
        measured.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(simulator, "measure_capacity", counting)
    return measured


def test_there_are_the_four_example_fleets():
    assert {"reference", "tiered-h100-a100", "fleet-64", "single-tier"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_fleet_loads_and_simulates(name):
    fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / f"{name}.yaml")
    assert fleet.description and fleet.workload.load is not None
    if name == "fleet-64":
        assert sum(p.replicas for p in fleet.pools) == 64
        return  # its capacity takes a while to measure: perf sim times it
    sim = Simulator(fleet, seed=0)
    assert sim.workload.mean_rate == pytest.approx(fleet.workload.load * fleet_capacity(fleet))
    events = sim.advance(120.0)
    assert len(events) > 100 and (events["outcome"] == 0).mean() > 0.9


def test_reference_fleet_file_is_the_environments_fleet_seed_for_seed():
    fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / "reference.yaml")
    same = {"pools", "router", "admission", "tenants", "failures", "knobs", "series_rows"}
    assert fleet.model_dump(include=same) == fleet_config().model_dump(include=same)
    # Its traffic is the steady scenario's stream at the same rate: identical events.
    resolved = with_load_resolved(fleet)
    load = resolved.workload.rate / NOMINAL_CAPACITY
    for seed in (0, 1):
        from_file = Simulator(resolved, seed=seed).advance(300.0)
        from_code = Simulator(fleet_config(), poisson_stream(load), seed=seed).advance(300.0)
        assert len(from_file) > 1000
        np.testing.assert_array_equal(from_file, from_code)


def test_reference_capacity_is_the_nominal_capacity(measurements):
    fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / "reference.yaml")
    assert fleet_capacity(fleet) == fleet.capacity_rps == NOMINAL_CAPACITY  # as stated
    assert not measurements
    measured = fleet_capacity(fleet.model_copy(update={"capacity_rps": None}))
    assert measured == pytest.approx(NOMINAL_CAPACITY, rel=0.05) and len(measurements) == 1


def test_capacity_is_measured_once_and_cached_by_content(tmp_path, capacity_cache, measurements):
    fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / "single-tier.yaml")
    first = fleet_capacity(fleet)
    assert len(measurements) == 1 and list((capacity_cache / "capacity").glob("*.json"))
    # Rate, load, knobs, failures and the SLO spec do not change the capacity: cache hits.
    workload = fleet.workload.model_copy(update={"load": 1.3})
    knobs = fleet.knobs.replace(cheap_tier_share=0.5)
    assert fleet_capacity(fleet.model_copy(update={"workload": workload, "knobs": knobs})) == first
    assert len(measurements) == 1
    # A different engine limit, length mix or model content measures again.
    pool = fleet.pools[0].model_copy(update={"max_num_seqs": 8})
    smaller = fleet_capacity(fleet.model_copy(update={"pools": [pool]}))
    lengths = fleet.workload.model_copy(update={"lengths": "azure-conv"})
    fleet_capacity(fleet.model_copy(update={"workload": lengths}))
    assert len(measurements) == 3 and smaller < first


def test_capacity_key_follows_the_model_file_content_not_its_path(tmp_path):
    model = tmp_path / "m" / "config.json"
    model.parent.mkdir()
    model.write_text((HF / "qwen2-0.5b" / "config.json").read_text())
    fleet = SimConfig.from_dict({"pools": [{"name": "a", "model": str(model)}]})
    key = capacity_key(fleet)
    moved = tmp_path / "n" / "config.json"
    moved.parent.mkdir()
    moved.write_text(model.read_text())
    assert capacity_key(SimConfig.from_dict({"pools": [{"name": "a", "model": str(moved)}]})) == key
    config = json.loads(model.read_text()) | {"num_hidden_layers": 12}
    model.write_text(json.dumps(config))
    assert capacity_key(fleet) != key


def test_eighty_percent_load_means_the_same_on_every_fleet():
    # Two fleets unlike each other (models, GPUs, tiers, lengths, arrival process): at 0.5 of
    # their capacity both serve nearly everything promptly, at 1.5 both queue and time out.
    for name in ("reference", "single-tier"):
        fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / f"{name}.yaml")
        served = {}
        for load in (0.5, 1.5):
            workload = fleet.workload.model_copy(update={"load": load})
            events = Simulator(fleet.model_copy(update={"workload": workload}), seed=0).advance(
                900.0
            )
            served[load] = (events["outcome"] == 0).mean()
        assert served[0.5] > 0.97 and served[1.5] < 0.9, (name, served)


TRACE = "ts_ms,input,output\n0,100,20\n250,300,40\n500,80,10\n1000,1200,200\n"


def _trace_fleet(tmp_path: Path, trace_text: str, extra: str = "") -> Path:
    (tmp_path / "traces").mkdir(exist_ok=True)
    (tmp_path / "traces" / "mine.csv").write_text(trace_text)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "pools:\n"
        "  - {name: strong, model: llama-3-8b, replicas: 1}\n"
        "workload:\n"
        "  kind: trace\n"
        "  trace: traces/mine.csv\n"
        "  columns: {timestamp: ts_ms, prompt_tokens: input, output_tokens: output}\n"
        "  time_scale: 0.001\n" + extra
    )
    return path


def test_trace_with_column_mapping_and_time_scale(tmp_path):
    fleet = SimConfig.from_yaml(_trace_fleet(tmp_path, TRACE))
    sim = Simulator(fleet, seed=0)
    # Four requests in 1 s plus one mean gap (1/3 s): the trace's own rate in seconds.
    assert sim.workload.mean_rate == pytest.approx(4 / (1 + 1 / 3))
    first = sim.workload.generate(np.random.default_rng(0), 0.0, 1.2)
    assert first["t_arrival"].tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert first["prompt_tokens"].tolist() == [100, 300, 80, 1200]
    loaded = SimConfig.from_yaml(_trace_fleet(tmp_path, TRACE, "  load: 0.5\n"))
    rate = Simulator(loaded, seed=0).workload.mean_rate
    assert rate == pytest.approx(0.5 * fleet_capacity(loaded))


@pytest.mark.parametrize(
    ("trace", "message"),
    [
        ("ts,input,output\n0,1,1\n", "missing column 'ts_ms'"),
        ("ts_ms,input,output\n0,10,5\n5,ten,5\n", "row 2 (line 3), column 'input'"),
        ("ts_ms,input,output\n0,10,5\nnoon,10,5\n", "row 2 (line 3), column 'ts_ms'"),
        ("ts_ms,input,output\n0,10,5\n10,,5\n", "row 2 (line 3), column 'input': missing"),
    ],
)
def test_bad_trace_rows_name_file_row_and_column(tmp_path, capacity_cache, trace, message):
    path = _trace_fleet(tmp_path, trace, "  load: 0.8\n")
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(path)
    assert f"{path}: invalid SimConfig" in str(info.value) and "line 3, workload" in str(info.value)
    assert str(tmp_path / "traces" / "mine.csv") in str(info.value)
    assert message in str(info.value)
    assert not capacity_cache.exists()  # nothing written
    result = runner.invoke(app, ["simulate", "--fleet", str(path), "--hours", "0.01"])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("pools:\n  - name: a\n    replicas: 2\n    max_num_seq: 8\n", 4, "pools.0.max_num_seq"),
        ("pools:\n  - {name: a}\ntenants:\n  - {name: t}\n  - {name: t}\n", 3, "tenants: dup"),
        ("failures:\n  - {pool: b, replica: 0, at_s: 1, duration_s: 1}\n", 2, "failures.0.pool"),
        ("workload:\n  kind: poisson\n  rate: 3\n  load: 0.8\n", 1, "not both"),
        ("workload:\n  kind: poisson\n\n  load: -1\n", 4, "workload.load"),
        ("workload:\n  kind: trace\n  trace: nowhere.csv\n", 3, "workload.trace"),
        ("workload: {kind: poisson, columns: {time: t}}\n", 1, "workload.columns.time"),
        ("slo_spec: specs/none.yaml\n", 1, "slo_spec"),
        ("episode_hours: 0\n", 1, "episode_hours"),
        ("pools:\n  - name: a\n    replicas: 2\n    min_replicas: 3\n", 4, "pools.0.min_replicas"),
        ("pools:\n  - name: a\n    model: models/x/config.json\n", 3, "pools.0.model"),
        ("pools:\n  - name: a\n    gpu: {name: g, memory_gib: 8}\n", 3, "pools.0.gpu"),
        *(
            (f"workload:\n  kind: {kind}\n  rate_curve:\n{curve}", line, field)
            for kind, curve, line, field in [
                ("poisson", "    step_s: 60\n    rates: [3]\n", 5, "rate_curve.rates: List"),
                ("poisson", "    step_s: 60\n    rates:\n    - 1\n    - -2\n", 7, "rates.1: "),
                (
                    "poisson",
                    "    step_s: 60\n    rates: [1, .nan]\n",
                    5,
                    "rates.1: Input should be a f",
                ),
                ("poisson", "    step_s: 60\n    rates: [0, 0]\n", 5, "rates: Value error, a rate"),
                ("poisson", "    step_s: 0\n    rates: [1, 2]\n", 4, "rate_curve.step_s: Input"),
                ("poisson", "    step_s: .inf\n    rates: [1, 2]\n", 4, "rate_curve.step_s: Input"),
                ("poisson", "    rates: [1, 2]\n", 3, "rate_curve.step_s: Field required"),
                ("poisson", "    {step_s: 60, rates: [1, 2], shape: 3}\n", 4, "rate_curve.shape"),
                (
                    "azure-code",
                    "    {step_s: 60, rates: [1, 2]}\n",
                    3,
                    "rate_curve: Value error, a re",
                ),
            ]
        ),
        *(
            (f"{workload}tenants:\n  - name: a\n    rate_curve:{curve}", line, field)
            for workload, curve, line, field in [
                ("", "\n      step_s: 60\n      rates: [3]\n", 5, "0.rate_curve.rates: List"),
                ("", " {step_s: 0, rates: [1, 2]}\n", 3, "tenants.0.rate_curve.step_s: Input"),
                ("", " {rates: [1, 2]}\n", 3, "tenants.0.rate_curve.step_s: Field required"),
                ("", "\n      step_s: 60\n      rates:\n      - 1\n      - -2\n", 7, "rates.1: "),
                ("", " {step_s: 60, rates: [1, .nan]}\n", 3, "rates.1: Input should be a f"),
                ("", " {step_s: 60, rates: [0, 0]}\n", 3, "rates: Value error, a rate curve"),
                (
                    "workload: {kind: azure-code}\n",
                    " {step_s: 60, rates: [1, 2]}\n",
                    4,
                    "tenants.0.rate_curve: a replay (workload kind 'azure-code') follows",
                ),
            ]
        ),
    ],
)
def test_fleet_file_errors_name_file_line_and_field(tmp_path, text, line, field):
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(path)
    message = str(info.value)
    assert str(path) in message and field in message, message
    if line is not None:
        assert f"line {line}, " in message, message


def test_rate_curve_is_the_shape_rate_and_load_rescale(capacity_cache):
    """Blocks of 2 and 6 requests/s: alone their mean (4) is the rate; ``rate: 40`` makes them
    20 and 60 (counts within 4 Poisson standard deviations, under 3% at 40 expected per second
    x 600 s); the capacity a load is relative to is the steady traffic's (same cache key)."""
    fleet = fleet_config()
    curve = {"step_s": 600.0, "rates": [2.0, 6.0]}

    def with_workload(**workload) -> SimConfig:
        data = fleet.model_dump(exclude_unset=True) | {"workload": workload}
        return SimConfig.from_dict(data)

    alone = with_workload(rate_curve=curve)
    assert alone.workload.build([1.0]).mean_rate == pytest.approx(4.0)
    workload = with_workload(rate=40.0, rate_curve=curve).workload.build([1.0])
    times = workload.generate(np.random.default_rng(0), 0.0, 2400.0)["t_arrival"]
    counts = np.histogram(times, bins=[0.0, 600.0, 1200.0, 1800.0, 2400.0])[0]
    expected = np.array([12_000.0, 36_000.0, 12_000.0, 36_000.0])
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), counts
    steady = with_workload(load=0.8)
    curved = with_workload(load=0.8, rate_curve=curve)
    assert capacity_key(curved) == capacity_key(steady)
    assert with_load_resolved(curved).workload.rate_curve == curved.workload.rate_curve


def test_slo_spec_is_relative_to_the_fleet_file_and_must_load(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "mine.yaml"
    spec.write_text(Path("slo/specs/default.yaml").read_text())
    path = tmp_path / "fleet.yaml"
    path.write_text("slo_spec: specs/mine.yaml\ncontrol_interval_s: 15\nepisode_hours: 4\n")
    fleet = SimConfig.from_yaml(path)
    assert fleet.slo_spec == str(spec) and fleet.control_interval_s == 15.0
    spec.write_text("version: prometheus/v1\nslos: [{name: x, objective: 200}]\n")
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(path)
    assert "slo_spec" in str(info.value) and str(spec) in str(info.value)


@pytest.mark.parametrize("option", ["--fleet", "--config"])
def test_simulate_takes_a_fleet_file(option):
    path = EXAMPLE_FLEETS_DIR / "single-tier.yaml"
    result = runner.invoke(app, ["simulate", option, str(path), "--hours", "0.02", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    fleet = SimConfig.from_yaml(path)
    expected = fleet.workload.load * fleet_capacity(fleet) * 72.0
    assert figures["requests"] == pytest.approx(expected, rel=0.35)


def test_elastic_pool_scales_within_its_min_and_max():
    fleet = SimConfig.from_yaml(EXAMPLE_FLEETS_DIR / "tiered-h100-a100.yaml")
    pool = fleet.pools[1].model_copy(update={"min_replicas": 2, "max_replicas": 10})
    sim = Simulator(fleet.model_copy(update={"pools": [fleet.pools[0], pool]}), seed=0)
    assert sim.set_desired_replicas("fast", 0) == 2
    assert sim.set_desired_replicas("fast", 50) == 10
    assert sim.set_desired_replicas("strong", 0) == 0  # no floor: the tier falls back


def _episode(env: LLMFleetEnv, seed: int, steps: int) -> list[tuple]:
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, env.action_space.shape[0]))
    obs, _ = env.reset(seed=seed)
    trajectory = [(obs,)]
    for action in actions:
        obs, reward, _, _, info = env.step(action.astype(np.float32))
        trajectory.append((obs, reward, info["knobs"]))
    return trajectory


@pytest.mark.parametrize("scenario", ["steady", "mixed", "model-rollout"])
def test_environment_on_the_reference_fleet_file_is_todays_seed_for_seed(scenario):
    today = LLMFleetEnv(scenario)
    from_file = LLMFleetEnv(scenario, fleet=EXAMPLE_FLEETS_DIR / "reference.yaml")
    assert from_file.observation_contract.digest == today.observation_contract.digest
    assert from_file.action_contract.digest == today.action_contract.digest
    for seed in (0, 1):
        for a, b in zip(_episode(today, seed, 8), _episode(from_file, seed, 8), strict=True):
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1:] == b[1:]


def test_environment_on_a_single_tier_fleet_holds_the_cheap_tier_share():
    path = EXAMPLE_FLEETS_DIR / "single-tier.yaml"
    env = LLMFleetEnv("model-rollout", fleet=path, episode_hours=0.1)
    fleet = SimConfig.from_yaml(path)
    assert env.observation_contract.pools == ("main",)
    assert env.observation_contract.nominal_capacity_rps == fleet_capacity(fleet)
    assert env.control_interval_s == fleet.control_interval_s
    _, info = env.reset(seed=0)
    assert "no cheap tier" in info["fixed_knobs"]["cheap_tier_share"]
    truncated, steps = False, 0
    while not truncated:
        _, reward, _, truncated, info = env.step(np.ones(env.action_space.shape, np.float32))
        assert info["knobs"]["cheap_tier_share"] == env.sim.knobs.cheap_tier_share == 0.0
        assert np.isfinite(reward)
        steps += 1
    assert steps == 12 and info["knobs"]["offload_fraction"] == 0.5  # the other knobs act


def test_environment_scenarios_load_relative_to_the_fleets_capacity():
    path = EXAMPLE_FLEETS_DIR / "tiered-h100-a100.yaml"
    env = LLMFleetEnv("steady", fleet=path)
    env.reset(seed=0)
    load = env.setup.parameters["load"]
    capacity = fleet_capacity(SimConfig.from_yaml(path))
    assert env.setup.workload.mean_rate == pytest.approx(load * capacity)
    assert env.observation_contract.pools == ("strong", "fast")
    assert env.episode_hours is None and env.max_steps == 4 * 3600 / 30  # the file's 4 hours


def _curved_fleet(tmp_path: Path) -> Path:
    """The reference fleet file with a rate curve of 4, 12 and 2 requests/s in 10-minute blocks
    instead of its steady load."""
    text = (EXAMPLE_FLEETS_DIR / "reference.yaml").read_text()
    text = text.replace("  load: 0.8", "  rate_curve: {step_s: 600, rates: [4, 12, 2]}\n#")
    path = tmp_path / "curved.yaml"
    path.write_text(text)
    return path


def _arrivals_per_step(env: LLMFleetEnv, seed: int) -> np.ndarray:
    env.reset(seed=seed)
    neutral, seen = np.zeros(env.action_space.shape, np.float32), [env._arrivals_seen]
    for _ in range(env.max_steps):
        env.step(neutral)
        seen.append(env._arrivals_seen)
    return np.diff(seen)


def test_fleet_traffic_scenario_replays_the_fleet_files_rate_curve(tmp_path):
    """``fleet-traffic`` runs the fleet file's own workload: the curve's blocks start with the
    episode (after the warm-up), within 4 Poisson standard deviations per block (at least 1,200
    expected: under 12%), the same seed giving the same arrivals; it is no suite scenario."""
    env = LLMFleetEnv("fleet-traffic", fleet=_curved_fleet(tmp_path), episode_hours=0.5)
    counts = _arrivals_per_step(env, seed=3).reshape(3, 20).sum(axis=1)
    again = _arrivals_per_step(env, seed=3).reshape(3, 20).sum(axis=1)
    expected = np.array([4.0, 12.0, 2.0]) * 600.0
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), counts
    assert np.array_equal(counts, again)
    assert "fleet-traffic" not in {*SCENARIOS, *TRAINING_SCENARIOS}


def test_a_fleet_without_tenant_curves_simulates_as_before(tmp_path):
    """The curved fleet (no tenant curve) at seed 4 finishes the same requests, tenant for
    tenant and block for block, as the code before tenant curves (its figures, to the request):
    the tenant draw of a fleet without them is untouched."""
    sim = Simulator(SimConfig.from_yaml(_curved_fleet(tmp_path)), seed=4)
    events = np.concatenate([sim.advance(t) for t in np.arange(30.0, 1801.0, 30.0)])
    block = np.minimum(events["t_arrival"] // 600.0, 2).astype(int)
    per_block = [np.bincount(events["tenant"][block == b], minlength=3).tolist() for b in range(3)]
    assert sim.arrivals == 10906
    assert per_block == [[710, 1205, 470], [2161, 3642, 1453], [361, 645, 249]]


def test_fleet_traffic_scenario_follows_the_tenants_curves_from_the_episodes_start(tmp_path):
    """The batch tenant's curve 1, 4, 1 (multipliers 0.5, 2, 0.5) on shares 0.3, 0.5, 0.2
    makes its share 1/9, 1/3 and 1/9 of the 2,400, 7,200 and 1,200 arrivals of the fleet
    curve's blocks, from the episode's start: within 4 binomial standard deviations (62, 160
    and 44 requests), while a curve left unaligned with the warm-up would put 800 in the first
    block instead of 267. The capacity a load is relative to is the steady mix's."""
    text = _curved_fleet(tmp_path).read_text()
    batch = "{name: batch, share: 0.2, priority: 0, weight: 1.0, patience_s: 300"
    path = tmp_path / "tenant-curved.yaml"
    path.write_text(text.replace(batch, batch + ", rate_curve: {step_s: 600, rates: [1, 4, 1]}"))
    env = LLMFleetEnv("fleet-traffic", fleet=path, episode_hours=0.5)
    env.reset(seed=3)
    start = env.warmup_s
    assert env.sim.now == start
    requests = env.setup.workload.generate(np.random.default_rng(1), start, start + 1800.0)
    block = ((requests["t_arrival"] - start) // 600.0).astype(int)
    for b, share in enumerate((1 / 9, 1 / 3, 1 / 9)):
        n = np.count_nonzero(block == b)
        mine = np.count_nonzero((block == b) & (requests["tenant"] == 2))
        assert abs(mine - n * share) < 4 * np.sqrt(n * share * (1 - share)), (b, mine, n)
    curved = SimConfig.from_yaml(path)
    assert curved.tenants[2].rate_curve.rates == [1.0, 4.0, 1.0]
    assert capacity_key(curved) == capacity_key(SimConfig.from_yaml(_curved_fleet(tmp_path)))


def test_an_unknown_scenario_names_the_fleets_own_traffic_among_the_known():
    with pytest.raises(ValueError, match=r"unknown scenario 'stedy'; known: steady.*fleet-traffic"):
        LLMFleetEnv("stedy")


def test_twin_serves_a_fleet_files_replicas():
    from envs.twin import EngineTwin

    twin = EngineTwin("steady", 0, speed=0.0, fleet=EXAMPLE_FLEETS_DIR / "single-tier.yaml")
    engines = twin.engines()
    assert len(engines) == 4 and {e["pool"] for e in engines} == {"main"}
    applied = twin.set_knobs({"cheap_tier_share": 0.5, "offload_fraction": 0.2})
    assert twin.sim.knobs.cheap_tier_share == 0.0 and twin.sim.knobs.offload_fraction == 0.2
    assert applied["offload_fraction"] == 0.2 and applied["cheap_tier_share"] == 0.0


SINGLE_TIER = str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")


def test_bench_on_a_fleet_file_runs_fitting_controllers_and_says_untuned(tmp_path):
    from eval.bench import BenchConfig, resolve_controllers, run_bench

    default = resolve_controllers(None, scenarios=["steady"], fleet=SINGLE_TIER)
    assert default and not any(c.is_policy for c in default)  # v2 policies govern 2 pools
    reference = resolve_controllers(
        None, scenarios=["steady"], fleet=str(EXAMPLE_FLEETS_DIR / "reference.yaml")
    )
    assert "ppo-standard" in {c.name for c in reference}  # the same contract: it fits
    config = BenchConfig(
        resolve_controllers(["static"]),
        scenarios=("steady",),
        seeds=(0,),
        episode_hours=0.05,
        tuned_dir=None,
        fleet=SINGLE_TIER,
    )
    result = run_bench(config, use_ray=False)
    (run,) = result.runs
    assert run.metrics["served_rps"] > 0.5 * fleet_capacity(SimConfig.from_yaml(SINGLE_TIER))
    assert result.warnings == [w for w in result.warnings if "not tuned on this fleet" in w]
    assert len(result.warnings) == 1 and f"--fleet {SINGLE_TIER}" in result.warnings[0]


@pytest.mark.parametrize(
    ("policy", "fleet", "match"),
    [
        ("ppo-standard-v2", SINGLE_TIER, "observation contract"),  # v2: two pools, its fleet's
        ("ppo-standard", str(EXAMPLE_FLEETS_DIR / "fleet-64.yaml"), "outside its envelope"),
    ],
)
def test_bench_refuses_a_policy_or_parameters_of_another_fleet(policy, fleet, match):
    from eval.bench import TUNED_DIR, BenchConfig, plan_runs, resolve_controllers

    with pytest.raises(ValueError, match=match):
        plan_runs(BenchConfig(resolve_controllers([policy]), ("steady",), fleet=fleet))
    tuned = BenchConfig(
        resolve_controllers(["pid"]), ("steady",), tuned_dir=TUNED_DIR, fleet=SINGLE_TIER
    )
    with pytest.raises(ValueError, match="tuned on fleet reference"):
        plan_runs(tuned)


def test_parameters_tuned_on_a_fleet_are_used_by_its_benchmark(tmp_path):
    from eval.bench import BenchConfig, plan_runs, resolve_controllers

    out = tmp_path / "tuned" / "static" / "steady.json"
    out.parent.mkdir(parents=True)
    args = ["tune", "static", "--scenario", "steady", "--fleet", SINGLE_TIER, "--seeds", "1"]
    args += ["--episode-hours", "0.05", "--max-candidates", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["fleet"] == SINGLE_TIER and saved["observation_contract"]
    config = BenchConfig(
        resolve_controllers(["static"]),
        ("steady",),
        tuned_dir=tmp_path / "tuned",
        fleet=SINGLE_TIER,
    )
    runs, params, warnings = plan_runs(config)
    assert params["static"]["steady"] == saved["best_params"] and not warnings
    assert runs[0].env_kwargs["fleet"] == SINGLE_TIER
