"""Wider domain randomisation: every episode's fleet and traffic drawn around the scenario's.

``LLMFleetEnv(randomisation={...})`` draws, at each reset and from the environment's
``np_random`` (same seed, same draws), a perturbed :class:`~envs.scenarios.GovernedFleet` that
the scenario is then built on: its load scaled, its prompt and output lengths scaled, its tenant
mix redrawn and its replicas failing at random. The environment keeps governing the real fleet
(admission limits and the load feature stay relative to its nominal capacity), so the policy
sees these as the traffic and failures they are, not as another fleet. The draws are reported
in ``info["scenario_parameters"]`` under ``randomised.*``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.scenarios import GovernedFleet
from envs.sim.workload import LengthModel

#: Shortest prompt or output a scaled length table may hold (a request has at least a token).
MIN_TOKENS = 1.0


class DomainRandomisation(BaseModel):
    """Ranges every reset draws from; the defaults leave the scenario, and the random draws of
    its episodes, as they are (a range of one value draws nothing).

    Parameters
    ----------
    load_scale:
        ``[low, high]``: the scenario's load times a factor drawn uniformly (``[0.7, 1.6]`` on
        scenarios of load 0.5-0.95 spans about 40-150 % of capacity).
    prompt_scale, output_scale:
        ``[low, high]``: prompt and output lengths times factors drawn log-uniformly (0.5x as
        likely as 2x).
    tenant_concentration:
        Tenant shares drawn from a Dirichlet whose mean is the fleet's mix and whose
        parameters sum to this (smaller spreads them more: 20 moves a share of 0.3 by about
        0.1); ``None`` keeps the fleet's mix.
    failure_rate_per_hour:
        ``[low, high]``: random replica failures per replica-hour, drawn uniformly, on every
        pool in place of its own ``mtbf_s`` (each failure lasts the pool's ``mttr_s``);
        scheduled failures stay. ``[0, 0]``, the default, keeps the pools' own rates.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    load_scale: tuple[float, float] = (1.0, 1.0)
    prompt_scale: tuple[float, float] = (1.0, 1.0)
    output_scale: tuple[float, float] = (1.0, 1.0)
    tenant_concentration: float | None = Field(None, gt=0.0)
    failure_rate_per_hour: tuple[float, float] = (0.0, 0.0)

    @field_validator("load_scale", "prompt_scale", "output_scale")
    @classmethod
    def _positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1] < math.inf:
            raise ValueError(f"must satisfy 0 < low <= high, got {list(value)}")
        return value

    @field_validator("failure_rate_per_hour")
    @classmethod
    def _rate_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] <= value[1] < math.inf:
            raise ValueError(f"must satisfy 0 <= low <= high, got {list(value)}")
        return value

    @classmethod
    def from_mapping(cls, data: DomainRandomisation | Mapping[str, Any]) -> DomainRandomisation:
        """A randomisation from a preset's or ``run.json``'s ``randomisation`` mapping."""
        return data if isinstance(data, cls) else cls.model_validate(dict(data))

    def sample(self, rng: np.random.Generator, fleet: GovernedFleet) -> RandomisedFleet:
        """One draw around ``fleet`` from ``rng``: the fleet the scenario is built on."""
        load = _draw(rng, self.load_scale)
        prompt, output = (_draw(rng, r, log=True) for r in (self.prompt_scale, self.output_scale))
        shares = self._tenant_shares(rng, fleet)
        rate = _draw(rng, self.failure_rate_per_hour)
        tenants = [
            t.model_copy(update={"share": s})
            for t, s in zip(fleet.config.tenants, shares, strict=True)
        ]
        pools = fleet.config.pools
        if self.failure_rate_per_hour != (0.0, 0.0):  # else the fleet's own failure rates stay
            mtbf = 3600.0 / rate if rate > 0 else math.inf
            pools = [p.model_copy(update={"mtbf_s": mtbf}) for p in pools]
        config = fleet.config.model_copy(update={"tenants": tenants, "pools": pools})
        parameters = {
            "randomised.load_scale": load,
            "randomised.prompt_scale": prompt,
            "randomised.output_scale": output,
            "randomised.failure_rate_per_hour": rate,
        } | {
            f"randomised.share.{t.name}": s
            for t, s in zip(fleet.config.tenants, shares, strict=True)
        }
        return RandomisedFleet(
            config,
            fleet.capacity_rps * load,
            length_model=scaled_lengths(fleet.lengths, prompt, output),
            parameters=parameters,
        )

    def _tenant_shares(self, rng: np.random.Generator, fleet: GovernedFleet) -> list[float]:
        shares = np.asarray(fleet.tenant_shares, dtype=np.float64)
        shares = shares / shares.sum()
        if self.tenant_concentration is None or len(shares) < 2:
            return shares.tolist()
        drawn = rng.dirichlet(self.tenant_concentration * shares)
        # A share of exactly 0 is not a tenant; keep every tenant present.
        drawn = np.maximum(drawn, 1e-3)
        return (drawn / drawn.sum()).tolist()


def _draw(rng: np.random.Generator, bounds: tuple[float, float], log: bool = False) -> float:
    """A uniform (``log``: log-uniform) draw within ``bounds``; a single value draws nothing,
    so the defaults leave the episodes' random streams as they were."""
    low, high = bounds
    if low == high:
        return float(low)
    if log:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.uniform(low, high))


def scaled_lengths(base: LengthModel, prompt_scale: float, output_scale: float) -> LengthModel:
    """``base`` with prompts ``prompt_scale`` and outputs ``output_scale`` times as long (at
    least :data:`MIN_TOKENS` each), the correlation kept."""
    return LengthModel(
        base.z_grid,
        np.maximum(base.prompt_quantiles * prompt_scale, MIN_TOKENS),
        np.maximum(base.output_quantiles * output_scale, MIN_TOKENS),
        base.correlation,
    )


@dataclass(frozen=True)
class RandomisedFleet(GovernedFleet):
    """A :class:`GovernedFleet` drawn by :meth:`DomainRandomisation.sample`: its traffic's
    lengths are ``length_model`` and ``parameters`` are the draws, for reports."""

    length_model: LengthModel | None = None
    parameters: Mapping[str, float] | None = None

    @property
    def lengths(self) -> LengthModel:
        return self.length_model or super().lengths
