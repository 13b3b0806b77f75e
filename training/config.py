"""Training presets: the scenario mix, environment arguments and PPO hyperparameters of a run.

A preset is a YAML file (``training/presets/<name>.yaml``, or any path) validated by
:class:`Preset`. Mistakes are reported as :class:`PresetError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from envs.scenario_names import ELASTIC_SCENARIO_NAMES, HELD_OUT_SCENARIO_NAMES, SCENARIO_NAMES
from slo.files import TextFileError, read_text

PRESET_DIR = Path(__file__).parent / "presets"


class PresetError(ValueError):
    """A preset that cannot be loaded: the message names the file and the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PPOConfig(_Strict):
    """stable-baselines3 PPO hyperparameters (``MlpPolicy``; ``n_envs`` environments per trial).

    One rollout is ``n_steps * n_envs`` timesteps; ``batch_size`` must divide it.
    """

    n_envs: int = Field(4, ge=1, le=64)
    n_steps: int = Field(512, ge=8)
    batch_size: int = Field(256, ge=2)
    n_epochs: int = Field(10, ge=1)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float = Field(0.2, gt=0.0, le=1.0)
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    net_arch: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 128])
    #: Initial log standard deviation of the Gaussian actions (exploration around neutral).
    log_std_init: float = Field(-0.5, ge=-5.0, le=2.0)

    @property
    def rollout_steps(self) -> int:
        """Timesteps collected per PPO iteration."""
        return self.n_steps * self.n_envs

    @model_validator(mode="after")
    def _batch_divides_rollout(self) -> PPOConfig:
        if self.rollout_steps % self.batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} must divide n_steps * n_envs = {self.rollout_steps}"
            )
        return self

    def sb3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`stable_baselines3.PPO` (all but ``n_envs``)."""
        kwargs = self.model_dump(exclude={"n_envs", "net_arch", "log_std_init"})
        kwargs["policy_kwargs"] = {
            "net_arch": list(self.net_arch),
            "log_std_init": self.log_std_init,
        }
        return kwargs


class VecNormalizeConfig(_Strict):
    """Arguments of :class:`stable_baselines3.common.vec_env.VecNormalize`."""

    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = Field(10.0, gt=0.0)
    clip_reward: float = Field(10.0, gt=0.0)


def _fleet_path(fleet: str) -> str:
    """A fleet file's absolute path (an example's name, or a path), after loading it: its
    errors name its file, line and field."""
    from envs.paths import EXAMPLE_FLEETS_DIR
    from envs.sim import SimConfig

    example = EXAMPLE_FLEETS_DIR / f"{fleet}.yaml"
    path = (example if example.is_file() else Path(fleet)).resolve()
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in EXAMPLE_FLEETS_DIR.glob("*.yaml")))
        raise ValueError(f"no fleet file {fleet!r}: give a path or one of {known}")
    SimConfig.from_yaml(path)  # ConfigError (a ValueError) names file, line and field
    return str(path)


class EnvKwargs(_Strict):
    """:class:`envs.fleet_env.LLMFleetEnv` arguments other than ``scenario`` (unset = default)."""

    spec: str | None = None
    control_interval_s: float | None = Field(None, gt=0.0)
    episode_hours: float | None = Field(None, gt=0.0)
    warmup_s: float | None = Field(None, ge=0.0)
    initial_budget_spent: tuple[float, float] | None = None
    elastic: bool | None = None
    fleet: str | None = Field(
        None, description="fleet file trained on: a name of examples/fleets or a path"
    )
    randomisation: dict[str, Any] | None = Field(
        None, description="envs.domain.DomainRandomisation: ranges drawn at each reset"
    )
    action_filter: dict[str, float] | None = Field(
        None, description="envs.action_filter.ActionRateLimit, {max_step: ...} (graph too)"
    )
    reward: dict[str, Any] | None = Field(
        None, description="envs.fleet_env.RewardConfig weights that differ from the defaults"
    )

    fleets: list[str] | None = Field(
        None,
        min_length=1,
        description="fleet files drawn from at each episode (contract 3), instead of fleet; one "
        "listed twice is drawn twice as often",
    )
    contract: Literal[2, 3] = Field(
        3,
        description="observation contract: 3 (any fleet, by role) or 2 (one fleet's pools); "
        "default 3, and 2 for an elastic preset (the sidecar does not run elastic v3 policies "
        "yet)",
    )

    @field_validator("randomisation", "action_filter", "reward")
    @classmethod
    def _environment_accepts(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        """What the environment will build from the mapping, built now (imported lazily: the
        simulator is heavy), so a mistake is reported when the preset loads."""
        if value is None:
            return None
        from envs.action_filter import ActionRateLimit
        from envs.domain import DomainRandomisation
        from envs.fleet_env import RewardConfig

        build = {
            "randomisation": DomainRandomisation.from_mapping,
            "action_filter": ActionRateLimit.from_mapping,
            "reward": RewardConfig.from_mapping,
        }[info.field_name]
        try:
            build(value)
        except ValidationError as exc:
            raise ValueError(_problems(exc)) from None
        except TypeError as exc:  # a value of the wrong type
            raise ValueError(str(exc)) from None
        return value

    @field_validator("fleet")
    @classmethod
    def _fleet_loads(cls, fleet: str | None) -> str | None:
        """The fleet file's absolute path (run.json and Ray workers find it); its errors name
        its file, line and field."""
        return None if fleet is None else _fleet_path(fleet)

    @field_validator("fleets")
    @classmethod
    def _fleets_load(cls, fleets: list[str] | None) -> list[str] | None:
        """Each fleet file's absolute path (see ``fleet``)."""
        return None if fleets is None else [_fleet_path(f) for f in fleets]

    @model_validator(mode="before")
    @classmethod
    def _default_contract(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("contract") is None:
            return data | {"contract": 2 if data.get("elastic") else 3}
        return data

    @model_validator(mode="after")
    def _fleets_need_contract_3(self) -> EnvKwargs:
        if self.fleets is not None and self.fleet is not None:
            raise ValueError("fleet and fleets: give one (fleets draws one per episode)")
        if self.fleets is not None and self.contract != 3:
            raise ValueError("fleets: drawing fleets needs contract 3 (v2 observes one fleet)")
        return self

    @field_validator("initial_budget_spent")
    @classmethod
    def _ordered_fractions(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 <= value[0] <= value[1] <= 1.0:
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got {list(value)}")
        return value

    def as_kwargs(self) -> dict[str, Any]:
        """The arguments that were set, JSON-ready (what ``run.json`` records)."""
        kwargs = self.model_dump(exclude_none=True)
        if "initial_budget_spent" in kwargs:
            kwargs["initial_budget_spent"] = list(kwargs["initial_budget_spent"])
        return kwargs


class Distribution(_Strict):
    """One searched hyperparameter: ``loguniform: [low, high]``, ``uniform: [low, high]`` or
    ``choice: [values...]`` (exactly one of them)."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    choice: list[float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform, uniform, choice")
        if self.uniform is not None and not self.uniform[0] < self.uniform[1]:
            raise ValueError(f"uniform bounds must satisfy low < high, got {list(self.uniform)}")
        if self.loguniform is not None and not 0 < self.loguniform[0] < self.loguniform[1]:
            raise ValueError(
                f"loguniform bounds must satisfy 0 < low < high, got {list(self.loguniform)}"
            )
        return self

    def sample(self, rng: np.random.Generator) -> float:
        """One value drawn from ``rng``."""
        if self.loguniform is not None:
            return float(np.exp(rng.uniform(*np.log(self.loguniform))))
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        choices = self.choice or []
        return choices[int(rng.integers(len(choices)))]


class SearchConfig(_Strict):
    """Hyperparameter search (``budgetpilot train --search N``): distributions over PPO
    hyperparameters, and the ASHA grace period (timesteps before a trial may be stopped)."""

    grace_timesteps: int = Field(..., ge=1)
    space: dict[str, Distribution]

    def sample(self, samples: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """``samples`` configurations (searched hyperparameters only), drawn from ``rng``."""
        return [{name: d.sample(rng) for name, d in self.space.items()} for _ in range(samples)]

    @field_validator("space")
    @classmethod
    def _known_hyperparameters(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        searchable = set(PPOConfig.model_fields) - {"n_envs", "n_steps", "batch_size", "net_arch"}
        unknown = sorted(set(space) - searchable)
        if unknown:
            raise ValueError(
                f"cannot search {', '.join(unknown)}; searchable: {', '.join(sorted(searchable))}"
            )
        return space


class Preset(_Strict):
    """A training preset.

    Parameters
    ----------
    name:
        Identifier recorded in every checkpoint's ``run.json``.
    description:
        One sentence for the CLI.
    timesteps:
        PPO timesteps per trial.
    chunk_timesteps:
        Timesteps between checkpoints (a resumed run loses at most one chunk).
    scenarios:
        Training scenarios drawn at each reset (domain randomisation); held-out ones are refused.
        An elastic preset (``env_kwargs.elastic: true``) draws elastic scenarios only, a fixed
        one fixed-fleet scenarios only (the policy's contract is one or the other).
    workers:
        CPUs one trial collects its rollouts on (Tune reserves them on one node). Above 1, the
        ``ppo.n_envs`` environments step in that many worker processes, an equal group in each
        (:class:`training.vec_env.WorkerVecEnv`), while the learner keeps one torch thread; it
        must divide ``ppo.n_envs``.
    fleet_reward_scale:
        Divide rewards by each fleet's own return scale before ``VecNormalize``
        (:class:`training.reward_scale.VecFleetRewardScale`): for presets drawing several fleets,
        so that the fleet whose episodes cost most does not dominate the others.
    """

    name: str
    description: str = ""
    timesteps: int = Field(..., ge=1)
    chunk_timesteps: int = Field(..., ge=1)
    scenarios: list[str] = Field(..., min_length=1)
    workers: int = Field(1, ge=1, le=64)
    env_kwargs: EnvKwargs = Field(default_factory=EnvKwargs)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    vecnormalize: VecNormalizeConfig = Field(default_factory=VecNormalizeConfig)
    fleet_reward_scale: bool = False
    search: SearchConfig | None = None

    @field_validator("scenarios")
    @classmethod
    def _training_scenarios_only(cls, scenarios: list[str]) -> list[str]:
        for name in scenarios:
            if name not in SCENARIO_NAMES:
                raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}")
            if name in HELD_OUT_SCENARIO_NAMES:
                raise ValueError(
                    f"scenario {name!r} is held out for evaluation and never used for training"
                )
        return scenarios

    @model_validator(mode="after")
    def _one_fleet_kind(self) -> Preset:
        elastic = bool(self.env_kwargs.elastic)
        wrong = [n for n in self.scenarios if (n in ELASTIC_SCENARIO_NAMES) != elastic]
        if wrong:
            kind = "fixed-fleet" if elastic else "elastic"
            fix = "" if elastic else " (set env_kwargs.elastic: true to train on them)"
            raise ValueError(
                f"scenarios {wrong} are {kind} scenarios, the preset's environment is "
                f"{'elastic' if elastic else 'fixed'}{fix}"
            )
        return self

    @model_validator(mode="after")
    def _whole_rollouts(self) -> Preset:
        rollout = self.ppo.rollout_steps
        for field in ("timesteps", "chunk_timesteps"):
            if getattr(self, field) % rollout:
                raise ValueError(
                    f"{field} {getattr(self, field)} must be a multiple of one rollout "
                    f"(ppo.n_steps * ppo.n_envs = {rollout})"
                )
        return self

    @model_validator(mode="after")
    def _workers_divide_envs(self) -> Preset:
        if self.ppo.n_envs % self.workers:
            raise ValueError(
                f"workers {self.workers} must divide ppo.n_envs {self.ppo.n_envs} "
                "(each worker steps the same number of environments)"
            )
        return self

    def with_overrides(self, **changes: Any) -> Preset:
        """A copy with top-level fields replaced (``None`` values ignored), validated again."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return _validate(data, f"preset {self.name!r} with overrides")


def _problems(exc: ValidationError) -> str:
    """Every error of ``exc`` as ``field.path: message``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in exc.errors()
    )


def _validate(data: Any, source: str) -> Preset:
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise PresetError(f"{source}: {_problems(exc)}") from None


def preset_path(name_or_path: str | Path) -> Path:
    """The YAML file of a preset name (``training/presets/<name>.yaml``) or an explicit path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return PRESET_DIR / f"{name_or_path}.yaml"


def available_presets() -> list[str]:
    """Names of the bundled presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """Load and validate a preset by name or path.

    Raises
    ------
    PresetError
        The file is missing, is not YAML, or a field is invalid (the message names it).
    """
    path = preset_path(name_or_path)
    if not path.is_file():
        raise PresetError(
            f"no preset {str(name_or_path)!r} ({path}); bundled: {', '.join(available_presets())}"
        )
    try:
        data = yaml.safe_load(read_text(path))
    except OSError as exc:
        raise PresetError(f"{path}: cannot read: {exc.strerror}") from None
    except TextFileError as exc:
        raise PresetError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping of preset fields")
    data.setdefault("name", path.stem)
    return _validate(data, str(path))
