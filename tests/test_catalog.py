"""Hardware/model catalog: architecture arithmetic and deployment validation."""

from __future__ import annotations

import pytest

from envs.sim.catalog import GPUS, MODELS, Deployment, get_gpu, get_model

KiB = 1024


@pytest.mark.parametrize(
    ("model", "kib"),
    [("llama-2-7b", 512), ("llama-2-13b", 800), ("llama-2-70b", 320), ("llama-3-8b", 128)],
)
def test_kv_bytes_per_token_match_published_figures(model: str, kib: int) -> None:
    assert get_model(model).kv_bytes_per_token == kib * KiB


@pytest.mark.parametrize(
    ("model", "billions"),
    [("llama-2-7b", 6.74), ("llama-2-70b", 68.98), ("llama-3-8b", 8.03), ("llama-3.2-1b", 1.24)],
)
def test_parameter_counts_match_model_cards(model: str, billions: float) -> None:
    assert get_model(model).params / 1e9 == pytest.approx(billions, rel=0.01)


def test_model_that_does_not_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"llama-2-70b on 1 x a100-80gb: weights \(128\.5 GiB\)"):
        Deployment(get_model("llama-2-70b"), get_gpu("a100-80gb"), tp=1)


@pytest.mark.parametrize(
    ("model", "tp", "field"),
    [("llama-2-7b", 3, "heads=32"), ("llama-3.2-3b", 3, "kv_heads=8"), ("llama-2-7b", 0, "tp")],
)
def test_tensor_parallel_degree_must_split_the_heads(model: str, tp: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Deployment(get_model(model), get_gpu("h100-80gb"), tp=tp)


def test_tp_above_kv_heads_replicates_kv_as_vllm_does() -> None:
    model = get_model("llama-2-70b")  # 8 KV heads
    tp8 = Deployment(model, get_gpu("h100-80gb"), tp=8)
    assert tp8.kv_heads_per_gpu == 1
    assert tp8.kv_bytes_per_token_per_gpu * 8 == model.kv_bytes_per_token


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-3-8b", "llama-3.2-1b"])
def test_kv_capacity_is_positive_whole_blocks_and_grows_with_tp(model: str) -> None:
    caps = [
        Deployment(get_model(model), get_gpu("a100-80gb"), tp=tp).kv_capacity_tokens
        for tp in (1, 2, 4, 8)
    ]
    assert caps[0] > 0
    assert all(c % 16 == 0 for c in caps)
    assert caps == sorted(caps) and len(set(caps)) == 4


def test_kv_capacity_matches_the_memory_arithmetic() -> None:
    d = Deployment(get_model("llama-2-7b"), get_gpu("a100-80gb"), gpu_memory_utilization=0.9)
    free = 80 * 1024**3 * 0.9 - d.model.weight_bytes - 2 * 1024**3
    assert d.kv_capacity_tokens == pytest.approx(free / (512 * KiB), abs=16)
    assert d.kv_capacity_blocks == d.kv_capacity_tokens // 16


def test_bad_memory_utilisation_is_refused() -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        Deployment(get_model("llama-2-7b"), get_gpu("a100-80gb"), gpu_memory_utilization=1.5)


def test_lookup_is_case_insensitive_and_errors_list_known_names() -> None:
    assert get_gpu("H100-80GB") is GPUS["h100-80gb"]
    assert get_model("Llama-3-8B") is MODELS["llama-3-8b"]
    with pytest.raises(ValueError, match="a100-80gb, h100-80gb"):
        get_gpu("v100")
    with pytest.raises(ValueError, match="llama-2-70b"):
        get_model("gpt-5")


def test_replica_cost_scales_with_gpus() -> None:
    d = Deployment(get_model("llama-2-70b"), get_gpu("h100-80gb"), tp=4)
    assert d.cost_per_hour == pytest.approx(4 * get_gpu("h100-80gb").cost_per_hour)
