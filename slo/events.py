"""The request-event contract between a request source and the error-budget engine.

A *request event* is one finished request (served, rejected, aborted or failed) described by the
fields every SLI of this project needs. The simulator (``envs``) emits arrays of
:data:`REQUEST_EVENT_DTYPE`; the engine (:mod:`slo`) ingests them in batches. Real engines do not
expose per-request records, so their metrics (histograms with the bucket boundaries below) are
turned into the same good/total counts by the metrics feed; SLI thresholds that lie on these
boundaries are therefore exact from both feeds.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

#: vLLM v1 ``vllm:time_to_first_token_seconds`` bucket upper bounds (seconds).
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
#: vLLM v1 ``vllm:inter_token_latency_seconds`` (and ``time_per_output_token``) bucket bounds.
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
#: vLLM v1 ``vllm:e2e_request_latency_seconds`` bucket upper bounds (seconds).
E2E_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

#: SGLang's default ``sglang:prompt_tokens_histogram`` bucket upper bounds (tokens).
SGLANG_PROMPT_TOKENS_BUCKETS: tuple[float, ...] = (
    100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000,
    12000, 15000, 20000, 22000, 25000, 30000, 35000, 40000,
)  # fmt: skip
#: SGLang's default ``sglang:generation_tokens_histogram`` bucket upper bounds (tokens).
SGLANG_GENERATION_TOKENS_BUCKETS: tuple[float, ...] = (
    100, 300, 500, 1000, 1200, 1500, 1700, 2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000,
    7000, 8000, 9000, 10000,
)  # fmt: skip


def length_buckets_1_2_5(max_model_len: int) -> tuple[float, ...]:
    """vLLM's bucket upper bounds of ``vllm:request_prompt_tokens`` and
    ``vllm:request_generation_tokens``: 1, 2, 5, 10, 20, 50... up to ``max_model_len``."""
    bounds: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return tuple(bounds)
            bounds.append(float(mantissa * scale))
        scale *= 10


class Outcome(IntEnum):
    """How a request ended (vLLM's ``finished_reason`` maps onto these)."""

    SERVED = 0
    REJECTED = 1  # refused before any work: admission control, prompt can never fit
    ABORTED = 2  # cancelled or timed out after admission
    FAILED = 3  # lost to an engine or replica failure


class Reason(IntEnum):
    """Why a request ended as it did (finer than :class:`Outcome`)."""

    STOP = 0  # served, stopped naturally
    LENGTH = 1  # served, cut by the max-tokens / length limit
    ADMISSION = 2  # rejected by the admission limit or shed by priority
    TOO_LONG = 3  # rejected: the prompt can never fit in the replica's KV cache
    TIMEOUT = 4  # aborted: waited longer than its deadline
    REPLICA_FAILURE = 5  # failed: its replica went down
    NO_REPLICA = 6  # rejected: no healthy replica in its tier


N_ITL_BUCKETS = len(ITL_BUCKETS_S) + 1  # the last bucket is +Inf

#: One finished request. Times are simulated seconds since the start of the run; latencies are
#: NaN when the request never produced a first token.
REQUEST_EVENT_DTYPE = np.dtype(
    [
        ("t_arrival", "f8"),
        ("t_end", "f8"),  # when the request finished or was turned away: the event's time
        ("tenant", "i2"),
        ("intended_tier", "i1"),  # the tier the request would get without downgrade routing
        ("tier", "i1"),  # the tier that served it (-1 if none)
        ("replica", "i2"),  # -1 if none
        ("outcome", "i1"),  # Outcome
        ("reason", "i1"),  # Reason
        ("prompt_tokens", "i4"),  # after truncation
        ("original_prompt_tokens", "i4"),  # before truncation
        ("output_tokens", "i4"),  # generated
        ("requested_output_tokens", "i4"),  # what the client would have generated unbounded
        ("truncated", "?"),
        ("preemptions", "i2"),
        ("difficulty", "f4"),  # in [0, 1]: how much the request needs the strong tier
        ("quality_loss", "f4"),  # expected quality lost by the tier that served it, in [0, 1]
        ("ttft_s", "f4"),
        ("e2e_s", "f4"),
        ("itl_max_s", "f4"),  # largest gap between two consecutive tokens
        # Gaps between consecutive tokens, counted per ITL_BUCKETS_S bucket (last one is +Inf):
        # the per-request histogram that makes ITL SLIs exact at any bucket boundary.
        ("itl_hist", "u4", (N_ITL_BUCKETS,)),
    ]
)


def finished_by_engine(events: np.ndarray) -> np.ndarray:
    """Which requests an engine finished: served, or aborted once it held them (what vLLM's
    ``request_success`` and length histograms count; failed ones died with the engine)."""
    outcome = events["outcome"]
    return (outcome == Outcome.SERVED) | ((outcome == Outcome.ABORTED) & (events["tier"] >= 0))


def empty_events(n: int = 0) -> np.ndarray:
    """Return a zeroed array of ``n`` request events (latencies NaN, tier and replica -1)."""
    events = np.zeros(n, dtype=REQUEST_EVENT_DTYPE)
    for field in ("ttft_s", "e2e_s", "itl_max_s"):
        events[field] = np.nan
    events["tier"] = -1
    events["replica"] = -1
    return events
