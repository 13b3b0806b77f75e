"""A user's own GPU: fitted from Vidur-format profiles, named by a fleet file's spec sheet.

The profiles are synthetic, generated from known constants, so that the fit can be checked to
recover them; the refusals name the file, the row and the column (profiles) or the field
(calibration files), and nothing is written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from envs.paths import REPO_ROOT, reference_data_dir
from envs.sim import Simulator
from envs.sim.capacity import capacity_key
from envs.sim.catalog import Deployment, get_gpu, get_model
from envs.sim.config import ConfigError, SimConfig, UncalibratedGpuWarning
from envs.sim.steptime import (
    ELEMENTWISE_OPS,
    GEMM_FLOOR_S,
    GEMM_OPS,
    GEMM_SLOPE_S,
    StepTimeModel,
    elementwise_width,
)

SCRIPT = REPO_ROOT / "scripts" / "fit_steptime.py"
VIDUR = reference_data_dir() / "profiles" / "vidur"

#: The constants the synthetic profiles are generated from (an L40S-like GPU).
TRUTH = {
    "launch_s": 4e-6,
    "knee_p": 1.6,
    "effective_tflops": 250.0,
    "effective_hbm_tb_s": 0.75,
    "elementwise": {"fixed_s": 3e-6, "s_per_element": 6e-12},
    "all_reduce": {"2": (2.5e-5, 5e-12), "4": (3e-5, 7e-12)},
}
#: The spec sheet of the same GPU in a fleet file.
SHEET = (
    "name: l40s, memory_gib: 48, bf16_tflops: 362, hbm_tb_s: 0.864, host_memory_gib: 64, "
    "pcie_gb_s: 25, host_memory_gb_s: 40, cost_per_hour: 1.9"
)
#: Model shapes profiled (one layer each): GQA and not, gated MLP and plain.
SHAPES = [
    {"n_head": 32, "n_kv_head": 8, "n_embd": 4096, "n_expanded_embd": 14336, "gated": True},
    {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008, "gated": True},
    {"n_head": 32, "n_kv_head": 32, "n_embd": 2560, "n_expanded_embd": 10240, "gated": False},
]
OPS = (*GEMM_OPS, *ELEMENTWISE_OPS, "emb")
STATS = ("min", "max", "mean", "median", "std")


def _shape_model(shape: dict):
    model = get_model("llama-3-8b")
    return type(model)(
        name="profile",
        layers=1,
        hidden=shape["n_embd"],
        heads=shape["n_head"],
        kv_heads=shape["n_kv_head"],
        head_dim=shape["n_embd"] // shape["n_head"],
        mlp_hidden=shape["n_expanded_embd"],
        vocab=32000,
        gated_mlp=shape["gated"],
    )


def _op_seconds(op: str, model, tp: int, n: int) -> float:
    if op in GEMM_OPS:
        weight_bytes = 2.0 * model.layer_linear_params[op] / tp
        memory = weight_bytes / (TRUTH["effective_hbm_tb_s"] * 1e12)
        compute = weight_bytes * n / (TRUTH["effective_tflops"] * 1e12)
        p = TRUTH["knee_p"]
        return TRUTH["launch_s"] + (memory**p + compute**p) ** (1 / p)
    fit = TRUTH["elementwise"]
    return fit["fixed_s"] + fit["s_per_element"] * n * elementwise_width(model, op, tp)


def write_profiles(folder: Path, prefix: str = "l40s", all_reduce: bool = True) -> None:
    """Vidur-format profiles of the TRUTH GPU, with 2% multiplicative noise (seeded)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [*(2**k for k in range(13)), *range(512, 4097, 256)]
    for i, shape in enumerate(SHAPES):
        rows = []
        for tp in (1, 2, 4):
            model = _shape_model(shape)
            for n in tokens:
                row = {}
                for op in OPS:
                    ms = _op_seconds(op, model, tp, n) * 1e3 * rng.lognormal(0.0, 0.02)
                    row |= {f"time_stats.{op}.{stat}": ms for stat in STATS}
                row |= {k: v for k, v in shape.items() if k != "gated"}
                row |= {"vocab_size": 32000, "use_gated_mlp": shape["gated"]}
                rows.append(row | {"num_tokens": n, "num_tensor_parallel_workers": tp})
        _write_csv(folder / f"{prefix}_model-{i}_mlp.csv", rows)
    if all_reduce:
        rows = []
        for workers, (fixed, per_byte) in TRUTH["all_reduce"].items():
            for size in (2**k for k in range(10, 28)):
                ms = (fixed + per_byte * 2 * size) * 1e3 * rng.lognormal(0.0, 0.02)
                rows.append(
                    {"": len(rows), "time_stats.all_reduce.median": ms, "rank": 0}
                    | {"num_workers": workers, "size": size, "collective": "all_reduce"}
                    | {"devices_per_node": workers, "max_devices_per_node": 8}
                )
        _write_csv(folder / f"{prefix}_dgx_all_reduce.csv", rows)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fit_steptime():
    """The script as a module, to run its ``main`` in this process."""
    spec = importlib.util.spec_from_file_location("fit_steptime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fleet(folder: Path, calibration: str, tp: int = 1, sheet: str = SHEET) -> Path:
    path = folder / "fleet.yaml"
    gpu = f"{{{sheet}, calibration: {calibration}}}"
    pool = f"{{name: strong, model: llama-3-8b, replicas: 2, tp: {tp}, gpu: {gpu}}}"
    path.write_text(f"pools:\n  - {pool}\nworkload: {{kind: poisson, rate: 4}}\n")
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The calibration file fitted by the real command on synthetic profiles."""
    folder = tmp_path_factory.mktemp("l40s")
    write_profiles(folder / "profiles")
    out = folder / "l40s.json"
    command = [sys.executable, str(SCRIPT), "--profiles", str(folder / "profiles")]
    run = subprocess.run(
        [*command, "--gpu", "l40s", "--out", str(out)],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return out, run


def test_fit_recovers_the_constants_the_profiles_were_made_from(fitted):
    out, _ = fitted
    calibration = json.loads(out.read_text())
    gemm = calibration["gemm"]
    for name in ("effective_tflops", "effective_hbm_tb_s"):
        assert gemm[name] == pytest.approx(TRUTH[name], rel=0.03), name
    assert gemm["knee_p"] == pytest.approx(TRUTH["knee_p"], rel=0.1)
    assert gemm["launch_s"] == pytest.approx(TRUTH["launch_s"], rel=0.25)
    for op, fit in calibration["elementwise"].items():
        assert fit["s_per_element"] == pytest.approx(6e-12, rel=0.03), op
        assert fit["fixed_s"] == pytest.approx(3e-6, rel=0.1), op
    assert sorted(calibration["all_reduce"]) == ["2", "4"]
    for workers, (fixed, per_byte) in TRUTH["all_reduce"].items():
        assert calibration["all_reduce"][workers]["s_per_byte"] == pytest.approx(per_byte, rel=0.03)
        assert calibration["all_reduce"][workers]["fixed_s"] == pytest.approx(fixed, rel=0.1)


def test_what_the_profiles_cannot_give_is_borrowed_by_a_stated_rule(fitted):
    out, run = fitted
    borrowed = json.loads(out.read_text())["provenance"]["borrowed"]
    # 250 TFLOP/s and 0.75 TB/s are nearer the A100's fitted rates than the H100's.
    assert borrowed["from"] == "a100-80gb"
    assert borrowed["fields"] == ["attention", "serving_stack"]
    assert "nearest in measured matrix-multiply rates" in borrowed["rule"]
    assert f"warning: l40s: {borrowed['rule']}" in run.stderr


def test_fleet_runs_the_calibrated_gpu_on_its_fitted_constants(fitted, tmp_path):
    out, _ = fitted
    (tmp_path / "gpus").mkdir()
    (tmp_path / "gpus" / "l40s.json").write_text(out.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedGpuWarning)  # calibrated: no warning
        fleet = SimConfig.from_yaml(_fleet(tmp_path, "gpus/l40s.json", tp=2))
    deployment = fleet.pools[0].deployment()
    assert deployment.gpu.calibrated
    coeffs = StepTimeModel.for_deployment(deployment).coeffs
    model = deployment.model
    for g, op in enumerate(GEMM_OPS):
        weight_bytes = model.layers * 2.0 * model.layer_linear_params[op] / 2
        floor = weight_bytes / (TRUTH["effective_hbm_tb_s"] * 1e12)
        slope = weight_bytes / (TRUTH["effective_tflops"] * 1e12)
        assert coeffs[GEMM_FLOOR_S + g] == pytest.approx(floor, rel=0.03), op
        assert coeffs[GEMM_SLOPE_S + g] == pytest.approx(slope, rel=0.03), op
    events = Simulator(fleet, seed=0).advance(20.0)
    assert len(events) > 20


def test_gpu_without_all_reduce_profile_is_calibrated_for_tp_1_only(tmp_path, capsys):
    write_profiles(tmp_path / "profiles", all_reduce=False)
    out = tmp_path / "l40s.json"
    argv = ["--profiles", str(tmp_path / "profiles"), "--gpu", "l40s", "--out", str(out)]
    _fit_steptime().main(argv)
    assert "no l40s_dgx_all_reduce.csv: calibrated for tp=1 only" in capsys.readouterr().err
    assert json.loads(out.read_text())["all_reduce"] == {}
    assert SimConfig.from_yaml(_fleet(tmp_path, "l40s.json")).pools[0].tp == 1
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(_fleet(tmp_path, "l40s.json", tp=2))
    message = str(info.value)
    assert "line 2, pools.0:" in message and f"gpu.calibration: {out}" in message
    assert "tp=2 is not calibrated: its profiles had no all-reduce measurements" in message


def _damage(path: Path, row: int, column: str, value: str | None) -> None:
    """Set one cell (``row`` counts data rows from 1), or drop the column (``row`` 0)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if row == 0:
        for r in rows:
            del r[column]
    else:
        rows[row - 1][column] = value
    _write_csv(path, rows)


@pytest.mark.parametrize(
    ("file", "row", "column", "value", "problem"),
    [
        ("l40s_model-1_mlp.csv", 0, "num_tokens", None, "missing column 'num_tokens'"),
        (
            "l40s_model-0_mlp.csv",
            3,
            "time_stats.mlp_act.mean",
            "fast",
            "row 3 (line 4), column 'time_stats.mlp_act.mean': not a number",
        ),
        (
            "l40s_model-2_mlp.csv",
            5,
            "n_embd",
            "",
            "row 5 (line 6), column 'n_embd': missing value",
        ),
        (
            "l40s_dgx_all_reduce.csv",
            7,
            "time_stats.all_reduce.median",
            "-0.2",
            "row 7 (line 8), column 'time_stats.all_reduce.median': '-0.2' is not a positive",
        ),
    ],
)
def test_bad_profile_is_refused_naming_file_row_and_column(
    tmp_path, capsys, file, row, column, value, problem
):
    write_profiles(tmp_path / "profiles")
    _damage(tmp_path / "profiles" / file, row, column, value)
    out = tmp_path / "l40s.json"
    argv = ["--profiles", str(tmp_path / "profiles"), "--gpu", "l40s", "--out", str(out)]
    with pytest.raises(SystemExit) as info:
        _fit_steptime().main(argv)
    assert f"{tmp_path / 'profiles' / file}: {problem}" in str(info.value)
    assert "nothing written" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def _calibration(**changes) -> dict:
    """A valid calibration file's content (the TRUTH constants), with ``changes``."""
    elementwise = dict.fromkeys((*ELEMENTWISE_OPS, "emb"), TRUTH["elementwise"])
    a100 = json.loads((REPO_ROOT / "envs/sim/params/steptime.json").read_text())["gpus"]
    stack = {k: v for k, v in a100["a100-80gb"]["serving_stack"].items() if k[0] != "_"}
    content = {
        "format": 1,
        "gpu": "l40s",
        "gemm": {k: TRUTH[k] for k in ("launch_s", "knee_p", "effective_tflops")}
        | {"effective_hbm_tb_s": TRUTH["effective_hbm_tb_s"]},
        "elementwise": elementwise,
        "all_reduce": {
            w: {"fixed_s": a, "s_per_byte": b} for w, (a, b) in TRUTH["all_reduce"].items()
        },
        "attention": a100["a100-80gb"]["attention"],
        "serving_stack": stack,
    }
    return content | changes


@pytest.mark.parametrize(
    ("content", "sheet", "problem"),
    [
        (
            json.dumps(_calibration(gpu="h200")),
            SHEET,
            "gpu: the calibration is for 'h200', not 'l40s'",
        ),
        (
            json.dumps(
                _calibration(gemm={"launch_s": 4e-6, "knee_p": 1.6, "effective_tflops": 250})
            ),
            SHEET,
            "invalid CalibrationFile\n  gemm.effective_hbm_tb_s: Field required",
        ),
        (json.dumps(_calibration(format=2)), SHEET, "format: Value error, format 2 is not 1"),
        ("{not json", SHEET, "not valid JSON"),
        (
            json.dumps(_calibration()),
            SHEET.replace("bf16_tflops: 362", "bf16_tflops: 200"),
            "gemm.effective_tflops: the profiles measured 250, more than the spec sheet's "
            "bf16_tflops (200)",
        ),
    ],
    ids=["another-gpu", "missing-field", "format", "not-json", "faster-than-sheet"],
)
def test_bad_calibration_file_is_refused_naming_the_field(tmp_path, content, sheet, problem):
    (tmp_path / "l40s.json").write_text(content)
    fleet = _fleet(tmp_path, "l40s.json", sheet=sheet)
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(fleet)
    message = str(info.value)
    assert str(fleet) in message and "gpu.calibration" in message, message
    assert str(tmp_path / "l40s.json") in message and problem in message, message


def test_capacity_cache_key_follows_the_calibration_content(tmp_path):
    path = tmp_path / "l40s.json"
    path.write_text(json.dumps(_calibration()))
    before = capacity_key(SimConfig.from_yaml(_fleet(tmp_path, "l40s.json")))
    path.write_text(json.dumps(_calibration(gemm=_calibration()["gemm"] | {"knee_p": 2.0})))
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))  # a new file, whatever the clock
    assert capacity_key(SimConfig.from_yaml(_fleet(tmp_path, "l40s.json"))) != before


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.skipif(not VIDUR.is_dir(), reason=f"Vidur profiles not found at {VIDUR}")
def test_users_fit_of_the_reference_profiles_matches_the_committed_a100(tmp_path):
    # The same A100 profiles through the user path, the A100 given by its spec sheet only:
    # the step times are the committed catalog A100's.
    out = tmp_path / "my-a100.json"
    argv = ["--profiles", str(VIDUR), "--gpu", "my-a100", "--prefix", "a100", "--out", str(out)]
    _fit_steptime().main(argv)
    sheet = (
        "name: my-a100, memory_gib: 80, bf16_tflops: 312, hbm_tb_s: 2.039, host_memory_gib: "
        "128, pcie_gb_s: 25, host_memory_gb_s: 51.2, cost_per_hour: 4.1"
    )
    fleet = SimConfig.from_yaml(_fleet(tmp_path, out.name, tp=2, sheet=sheet))
    mine = StepTimeModel.for_deployment(fleet.pools[0].deployment()).coeffs
    model, a100 = get_model("llama-3-8b"), get_gpu("a100-80gb")
    catalog = StepTimeModel.for_deployment(Deployment(model, a100, 2)).coeffs
    np.testing.assert_allclose(mine, catalog, rtol=1e-4)
