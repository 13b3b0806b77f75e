"""The control knobs of a simulated fleet: what a governor may change while it serves.

Every knob has a real-world counterpart an operator (or the budgetpilot sidecar) can turn on a
live vLLM / llm-d fleet, and bounds that keep it meaningful. ``inf`` switches a limit off.
:meth:`envs.sim.Simulator.set_knobs` applies new values from the simulator's current time on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

#: Largest share of decode KV that may live in host memory (at 1 the GPU would hold none).
MAX_OFFLOAD_FRACTION = 0.9

#: Per knob: (low, high, real-world counterpart). Bounds are inclusive; ``inf`` means "off".
KNOB_DOCS: dict[str, tuple[float, float, str]] = {
    "cheap_tier_share": (
        0.0, 1.0,
        "share of traffic the router sends to the cheap tier (RouteLLM threshold, llm-d "
        "InferenceModelRewrite weights)",
    ),
    "offload_fraction": (
        0.0, MAX_OFFLOAD_FRACTION,
        "share of decode KV and attention kept in host memory and run on the CPU (NEO)",
    ),
    "admission_rate_limit": (
        0.0, math.inf, "gateway token-bucket rate limit in requests/s (Envoy local rate limit)"
    ),
    "concurrency_limit": (
        1.0, math.inf, "requests admitted and not yet finished, fleet-wide (gateway max in flight)"
    ),
    "shed_priority_below": (
        0.0, math.inf, "tenants whose priority is below this level are rejected at the gateway"
    ),
    "max_context_tokens": (
        1.0, math.inf, "prompts longer than this are truncated (vLLM truncate_prompt_tokens)"
    ),
    "max_output_tokens": (
        1.0, math.inf, "generation stops at this many tokens (the request's max_tokens cap)"
    ),
    "max_num_seqs_scale": (
        0.0, 1.0, "batch limit as a fraction of each pool's max_num_seqs (vLLM --max-num-seqs)"
    ),
    "kv_watermark": (
        0.0, 0.5, "share of KV blocks kept free when admitting prompts (vLLM watermark)"
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Knobs:
    """Knob settings in force; the defaults are an untouched vLLM fleet.

    Parameters
    ----------
    cheap_tier_share:
        Share of requests routed to the cheap tier: the easiest ones by the router's noisy
        difficulty estimate (RouteLLM-style threshold calibrated to this share).
    offload_fraction:
        Share of every decoding sequence's KV cache kept in host memory, its attention computed by
        the CPU concurrently with the GPU (NEO). Raises KV capacity, may lengthen iterations.
    admission_rate_limit:
        Token-bucket rate of admitted requests per second, fleet-wide (``inf`` = off).
    concurrency_limit:
        Most requests admitted and not yet ended, fleet-wide (``inf`` = off).
    shed_priority_below:
        Requests of tenants whose priority is below this level are rejected (0 sheds nobody
        when priorities are >= 0).
    max_context_tokens:
        Prompts longer than this are truncated to it (``inf`` = off).
    max_output_tokens:
        Output is cut at this many tokens; such requests end with reason LENGTH (``inf`` = off).
    max_num_seqs_scale:
        Multiplies each pool's ``max_num_seqs`` (at least one sequence runs).
    kv_watermark:
        Fraction of KV blocks a replica keeps free when it admits a prompt.
    tenant_weights:
        Queue weights per tenant (weighted fair queueing in each replica's waiting queue);
        ``None`` keeps the weights of the configuration.
    """

    cheap_tier_share: float = 0.0
    offload_fraction: float = 0.0
    admission_rate_limit: float = math.inf
    concurrency_limit: float = math.inf
    shed_priority_below: float = 0.0
    max_context_tokens: float = math.inf
    max_output_tokens: float = math.inf
    max_num_seqs_scale: float = 1.0
    kv_watermark: float = 0.01
    tenant_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "tenant_weights":
                continue
            value = getattr(self, f.name)
            low, high, _ = KNOB_DOCS[f.name]
            if not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"knob {f.name}: expected a number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"knob {f.name}={value} is outside [{low}, {high}]")
        if self.max_num_seqs_scale == 0.0:
            raise ValueError("knob max_num_seqs_scale must be above 0")
        if self.tenant_weights is not None:
            weights = tuple(float(w) for w in self.tenant_weights)
            if not weights or any(not w > 0.0 or math.isinf(w) for w in weights):
                raise ValueError(f"knob tenant_weights: need finite weights > 0, got {weights}")
            object.__setattr__(self, "tenant_weights", weights)

    def replace(self, **changes: object) -> Knobs:
        """Return a copy with ``changes`` applied (validated like the constructor)."""
        return replace(self, **changes)
