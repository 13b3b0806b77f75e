"""Training presets that name a fleet file: validated when the preset loads (errors name the
preset field and the fleet file's line), and the training environment governs that fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envs.paths import EXAMPLE_FLEETS_DIR
from envs.sim.capacity import CACHE_ENV
from training.config import PresetError, load_preset
from training.learner import make_training_env

PRESET = {
    "timesteps": 2048,
    "chunk_timesteps": 512,
    "scenarios": ["steady"],
    "ppo": {"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 2, "net_arch": [32, 32]},
}


def write_preset(directory: Path, fleet: str) -> Path:
    path = directory / "fleet.yaml"
    env_kwargs = {"episode_hours": 0.1, "warmup_s": 60.0, "fleet": fleet}
    path.write_text(yaml.safe_dump(PRESET | {"env_kwargs": env_kwargs}))
    return path


@pytest.mark.parametrize(
    "fleet", ["single-tier", str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")], ids=["name", "path"]
)
def test_a_preset_trains_on_the_fleet_it_names(tmp_path, monkeypatch, fleet):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    preset = load_preset(write_preset(tmp_path, fleet))
    assert preset.env_kwargs.fleet == str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")
    env = make_training_env(preset.scenarios, preset.env_kwargs.as_kwargs())
    assert [p.name for p in env.unwrapped.fleet.config.pools] == ["main"]
    assert env.unwrapped.fleet.fixed_knobs == {
        "cheap_tier_share": "a single-tier fleet has no cheap tier: fixed at 0"
    }


def test_a_preset_naming_a_bad_fleet_is_refused_naming_field_file_and_line(tmp_path):
    with pytest.raises(PresetError, match=r"env_kwargs\.fleet: .*no fleet file 'atlantis'"):
        load_preset(write_preset(tmp_path, "atlantis"))
    bad = tmp_path / "bad-fleet.yaml"
    bad.write_text("pools:\n  - name: a\n    replica: 2\n")
    with pytest.raises(PresetError) as info:
        load_preset(write_preset(tmp_path, str(bad)))
    message = str(info.value)
    assert "env_kwargs.fleet" in message and str(bad) in message
    assert "line 3" in message and "pools.0.replica" in message
