"""Models from a Hugging Face config.json, and GPUs known by their spec sheet only.

The fixtures under tests/fixtures/hf/ hold the documented fields of each model's config.json
(no download at run time); parameter counts are the model cards'.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from envs.sim import ConfigError, SimConfig, Simulator
from envs.sim.catalog import Deployment, get_gpu, get_model, model_from_hf_config
from envs.sim.config import UncalibratedGpuWarning
from envs.sim.steptime import StepTimeModel

HF = Path(__file__).parent / "fixtures" / "hf"


def _config(name: str) -> Path:
    return HF / name / "config.json"


@pytest.mark.parametrize(
    ("name", "billions", "kv_kib", "gated", "tied"),
    [
        ("meta-llama-3-8b", 8.03, 128, True, False),  # GQA 32/8
        ("mistral-7b-v0.1", 7.24, 128, True, False),
        ("qwen2-7b", 7.62, 56, True, False),  # GQA 28/4
        ("qwen2-0.5b", 0.49, 12, True, True),  # tied embeddings
        ("gemma-2b", 2.51, 18, True, True),  # multi-query, head_dim 256, tied by default
        ("pythia-1.4b", 1.41, 192, False, False),  # plain MLP
    ],
)
def test_hf_config_gives_the_model_card_shape(name, billions, kv_kib, gated, tied):
    model = model_from_hf_config(_config(name))
    assert model.name == name
    assert model.params / 1e9 == pytest.approx(billions, rel=0.01)
    assert model.kv_bytes_per_token == kv_kib * 1024
    assert (model.gated_mlp, model.tied_embeddings) == (gated, tied)


def test_hf_config_matches_the_catalog_entry():
    from_file = model_from_hf_config(_config("meta-llama-3-8b"))
    catalog = get_model("llama-3-8b")
    assert from_file.params == catalog.params
    assert from_file.layer_linear_params == catalog.layer_linear_params
    assert from_file.kv_bytes_per_token == catalog.kv_bytes_per_token


@pytest.mark.parametrize(
    ("edit", "field", "detail"),
    [
        ({"num_local_experts": 8}, "num_local_experts", "mixture of 8 experts"),
        ({"model_type": "t5"}, "model_type", "'t5'"),
        ({"num_hidden_layers": None}, "num_hidden_layers", "missing"),
        ({"hidden_size": "4096"}, "hidden_size", "positive integer"),
        ({"num_key_value_heads": 5}, "num_key_value_heads", "5 KV heads do not divide 32"),
        ({"torch_dtype": "int4"}, "torch_dtype", "'int4'"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantization_config", "quantised"),
    ],
)
def test_bad_hf_config_is_refused_naming_file_and_field(tmp_path, edit, field, detail):
    config = json.loads(_config("meta-llama-3-8b").read_text())
    config.update(edit)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "my-model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        model_from_hf_config(path)
    assert str(path) in str(info.value) and field in str(info.value)
    assert detail in str(info.value)


def test_unreadable_hf_config_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        model_from_hf_config(path)
    with pytest.raises(ValueError, match="cannot read"):
        model_from_hf_config(tmp_path / "absent" / "config.json")


def _fleet(tmp_path: Path, pool: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"pools:\n  - {pool}\nworkload: {{kind: poisson, rate: 2}}\n")
    return path


def test_fleet_file_takes_a_model_by_config_path_relative_to_itself(tmp_path):
    model_dir = tmp_path / "models" / "qwen2-7b"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(_config("qwen2-7b").read_text())
    fleet = SimConfig.from_yaml(
        _fleet(tmp_path, "{name: strong, model: models/qwen2-7b/config.json, replicas: 2}")
    )
    assert fleet.pools[0].model_spec().params / 1e9 == pytest.approx(7.62, rel=0.01)
    events = Simulator(fleet, seed=0).advance(60.0)
    assert len(events) > 50


@pytest.mark.parametrize(
    ("model", "tp", "numbers"),
    [
        ("llama-2-70b", 1, ["weights (128.5 GiB)", "72.0 GiB usable"]),
        ("qwen2-7b", 3, ["tp=3 does not divide heads=28"]),
        ("qwen2-7b", 8, ["tp=8 does not divide heads=28"]),
    ],
)
def test_model_that_does_not_fit_or_split_is_refused_with_the_numbers(tmp_path, model, tp, numbers):
    path = _fleet(tmp_path, f"{{name: big, model: {_config(model)}, tp: {tp}}}")
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(path)
    message = str(info.value)
    assert str(path) in message and "line 2, pools.0" in message
    assert all(n in message for n in numbers), message


DATASHEET = (
    "{name: l40s, memory_gib: 48, bf16_tflops: 362, hbm_tb_s: 0.864, host_memory_gib: 64, "
    "pcie_gb_s: 25, host_memory_gb_s: 40, cost_per_hour: 1.9}"
)


def test_datasheet_gpu_runs_uncalibrated_with_a_warning(tmp_path):
    path = _fleet(tmp_path, f"{{name: strong, model: llama-3-8b, replicas: 1, gpu: {DATASHEET}}}")
    with pytest.warns(UncalibratedGpuWarning, match="'l40s' is uncalibrated"):
        fleet = SimConfig.from_yaml(path)
    deployment = fleet.pools[0].deployment()
    assert not deployment.gpu.calibrated and deployment.gpu.memory_bytes == 48 * 1024**3
    events = Simulator(fleet, seed=0).advance(60.0)
    assert len(events) > 50


def test_roofline_is_a_lower_bound_of_the_calibrated_step_time():
    # The same A100 by its spec sheet only: every operator at peak, no software cost.
    a100 = get_gpu("a100-80gb")
    sheet = type(a100)(**{**vars(a100), "calibrated": False, "name": "a100-sheet"})
    model = get_model("llama-3-8b")
    calibrated = StepTimeModel.for_deployment(Deployment(model, a100))
    roofline = StepTimeModel.for_deployment(Deployment(model, sheet))
    for batch in (1, 64, 2048):
        args = (batch, batch * 256.0, 32, 32 * 1000.0, 0.0)
        assert 0 < roofline.iteration_time(*args) < calibrated.iteration_time(*args)
    assert np.all(np.isfinite(roofline.coeffs))


def test_datasheet_gpu_with_tensor_parallelism_needs_its_interconnect(tmp_path):
    pool = f"{{name: strong, model: llama-3-8b, tp: 2, gpu: {DATASHEET}}}"
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="interconnect_gb_s"):
        warnings.simplefilter("ignore", UncalibratedGpuWarning)
        SimConfig.from_yaml(_fleet(tmp_path, pool))
    sheet = DATASHEET.replace("}", ", interconnect_gb_s: 450}")
    with pytest.warns(UncalibratedGpuWarning):
        fleet = SimConfig.from_yaml(_fleet(tmp_path, pool.replace(DATASHEET, sheet)))
    assert fleet.pools[0].deployment().gpu.interconnect_bandwidth == 450e9


def test_a_config_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff\xfe\x00not text")
    with pytest.raises(ValueError, match="config.json"):
        model_from_hf_config(path)
