"""The event-driven numba core of the fleet simulator.

State is struct-of-arrays: a few 2-D numpy arrays whose columns are named by the constants below
(``qi[s, Q_PROMPT]`` is the prompt length of request slot ``s``, ``ri[r, R_USED_BLOCKS]`` the KV
blocks replica ``r`` uses), gathered in the :class:`Fleet` named tuple that the ``@njit``
functions read and write in place. Packing fields into few arrays matters to numba: every array
in a tuple is threaded through every function, which dominates compile time otherwise.

One call of :func:`advance` moves the whole fleet to ``until``, processing in time order replica
failures, replica events (the end of a planned run of iterations, or a recovery) and request
arrivals. A replica alternates *scheduling points* and *runs*. At a scheduling point it does what
vLLM's scheduler does before an iteration (continue decodes and partial prefills, preempt when KV
blocks run out, swap in, admit waiting prompts), then plans a run:

* an iteration that computes prompt tokens or moves KV over PCIe is a run of one iteration;
* otherwise the batch only decodes, and nothing changes until the first request finishes or the
  KV blocks run out: the run covers all those ``k`` iterations at once. Every decoding context
  grows by one token per iteration, so the iteration times form arithmetic progressions inside
  the step-time model's ``max(gpu, cpu)``; sums, bucket counts and maxima are closed forms.

An arrival cuts a decode run short at the end of the iteration in progress (when the replica could
admit it), so new requests see the iteration boundaries of a step-by-step simulation.

Replica slots have a lifecycle (``ri[r, R_STATE]``): STOPPED, PROVISIONING, SERVING, DRAINING.
The router sees only SERVING replicas (``members`` lists them per tier); a DRAINING replica
finishes what it holds and stops when it is empty. The simulator decides the other transitions
(:func:`transition`) and calls :func:`advance` up to each of them; :func:`advance` returns early
when a draining replica stops, so that the pool can replace it at that moment. Failures
(``R_HEALTHY``) are independent of the lifecycle: a failed replica keeps its state and the router
skips it until it recovers.

Inter-token gaps: every decoding request produces one token per iteration, so its gaps are the
durations of the iterations it decoded in. Each replica keeps a cumulative histogram of its
iteration durations; a request's histogram is that histogram at its end minus at its decode start,
plus the gaps it accumulated before a preemption and the long gap across one.

The functions are compiled without numba's reference counting (``_nrt=False``): they never
allocate, and counting the references of every array passed to every call costs more than the
simulation itself. The entry points are :func:`advance`, :func:`interrupt_runs` and
:func:`transition`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from envs.sim.steptime import (
    CPU_ATTN_S_PER_CTX_TOKEN,
    GPU_ATTN_S_PER_CTX_TOKEN,
    OVERHEAD_S,
    SWAP_S_PER_TOKEN,
    gpu_fixed_time,
    iteration_time,
)
from slo.events import N_ITL_BUCKETS, Outcome, Reason

# Request slot columns, integers (qi) and floats (qf).
(Q_PROMPT, Q_ORIG_PROMPT, Q_REQUESTED, Q_TARGET, Q_GENERATED, Q_COMPUTED, Q_PREFILL_TARGET,
 Q_BLOCKS, Q_CHUNK, Q_TENANT, Q_INTENDED_TIER, Q_TIER, Q_REPLICA, Q_PREEMPTIONS, Q_PHASE, Q_NEXT,
 Q_TRUNCATED, N_QI) = range(18)  # fmt: skip
# Q_TARGET: output tokens it will generate (after the output caps); Q_COMPUTED: tokens whose KV a
# (re)prefill has computed; Q_PREFILL_TARGET: tokens to (re)compute; Q_BLOCKS: KV blocks held
# (in swap space while swapped); Q_CHUNK: prompt tokens scheduled in the current iteration;
# Q_NEXT: next slot of the waiting or swapped list (-1 ends it).
(Q_T_ARRIVAL, Q_DEADLINE, Q_T_FIRST, Q_T_LAST_TOKEN, Q_ITL_MAX, Q_TAG, Q_DIFFICULTY,
 N_QF) = range(8)  # fmt: skip
# Q_DEADLINE: arrival + the tenant's patience for the first token; Q_TAG: start tag of start-time
# fair queueing.

# Replica columns, integers (ri) and floats (rf).
(R_POOL, R_TIER, R_HEALTHY, R_CAP_BLOCKS, R_USED_BLOCKS, R_SWAP_USED, R_N_RUNNING, R_N_WAITING,
 R_WAITING_BLOCKS, R_SW_HEAD, R_SW_TAIL, R_N_SWAPPED, R_BLOCKED, R_OUTSTANDING, R_RUN_K,
 R_RUN_DECODE_ONLY, R_RUN_DECODERS, R_RUN_PREFILL, R_KV_PEAK, R_PREEMPTIONS, R_PREFILL_TOKENS,
 R_DECODE_TOKENS, R_ITERATIONS, R_STEPS, R_STATE, N_RI) = range(26)  # fmt: skip
# R_CAP_BLOCKS: KV blocks under the current offload fraction; R_WAITING_BLOCKS: blocks the queued
# prompts will need; R_SW_*: the swapped list (FIFO); R_BLOCKED: the waiting queue waits for KV or
# a sequence slot; R_OUTSTANDING: requests on the replica; R_RUN_*: the planned run (k
# iterations, decode-only or not, its decoders and prompt tokens); R_KV_PEAK: most blocks in use
# during any planned run; R_STEPS: scheduling points; R_STATE: lifecycle state (below).
(R_NEXT_T, R_VTIME, R_RUN_T0, R_RUN_A, R_RUN_ALPHA, R_RUN_B, R_RUN_BETA, R_STAT_T, R_KV_INTEGRAL,
 R_BUSY_S, R_UP_T0, R_UP_S, N_RF) = range(13)  # fmt: skip
# R_NEXT_T: its next event (inf = idle); R_VTIME: fair-queueing virtual time; the run's iteration
# i (from R_RUN_T0) lasts max(R_RUN_A + R_RUN_ALPHA * i, R_RUN_B + R_RUN_BETA * i); R_KV_INTEGRAL:
# integral of used blocks over time, accumulated up to R_STAT_T; R_BUSY_S: time in iterations;
# R_UP_T0: start of its current provisioned period; R_UP_S: seconds of its ended ones.

# Pool columns (integers; the float ones are separate arrays).
(P_BLOCK_TOKENS, P_GPU_BLOCKS, P_HOST_BLOCKS, P_SWAP_BLOCKS, P_MAX_NUM_SEQS, P_MAX_BATCHED_TOKENS,
 P_CHUNKED_PREFILL, P_SWAP_PREEMPTION, P_MAX_MODEL_LEN, N_PI) = range(10)  # fmt: skip

# Tenant columns.
T_WEIGHT, T_PRIORITY, T_PATIENCE, N_TF = range(4)

# Tier columns.
TIER_N_MEMBERS, TIER_RR, N_TIER_I = range(3)

# Fleet-wide floats (gf): time, token bucket and the knobs (inf = off).
(G_NOW, G_BUCKET, G_BUCKET_T, K_OFFLOAD, K_RATE, K_BURST, K_CONCURRENCY, K_SHED_BELOW,
 K_MAX_OUTPUT, K_SEQS_SCALE, K_WATERMARK, N_GF) = range(12)  # fmt: skip
# Fleet-wide integers (gi). G_NEXT_ARRIVAL, G_NEXT_FAILURE: where advance resumes in its inputs;
# G_STOPS: draining replicas that stopped during the current advance call.
(G_OUTSTANDING, G_N_OUT, G_FREE_TOP, G_POLICY, G_FALLBACK, G_NEXT_ARRIVAL, G_NEXT_FAILURE, G_STOPS,
 N_GI) = range(9)  # fmt: skip

# Phases of a request on a replica.
PREFILL = 0  # (re)computing its prompt; waiting requests are in this phase too
RESUME = 1  # swapped back in: its next token ends a pause
DECODE = 2

# Lifecycle states of a replica slot. A slot is provisioned (and paid for) in every state but
# STOPPED; only a SERVING replica receives requests.
STOPPED = 0
PROVISIONING = 1  # starting: node, weights, engine
SERVING = 2
DRAINING = 3  # finishing what it holds, then it stops

# Routing policies.
ROUND_ROBIN = 0
LEAST_OUTSTANDING = 1
KV_AWARE = 2

_SERVED = np.int8(Outcome.SERVED)
_REJECTED = np.int8(Outcome.REJECTED)
_ABORTED = np.int8(Outcome.ABORTED)
_FAILED = np.int8(Outcome.FAILED)
_STOP = np.int8(Reason.STOP)
_LENGTH = np.int8(Reason.LENGTH)
_ADMISSION = np.int8(Reason.ADMISSION)
_TOO_LONG = np.int8(Reason.TOO_LONG)
_TIMEOUT = np.int8(Reason.TIMEOUT)
_REPLICA_FAILURE = np.int8(Reason.REPLICA_FAILURE)
_NO_REPLICA = np.int8(Reason.NO_REPLICA)


class Fleet(NamedTuple):
    """Everything the kernel reads and writes."""

    qi: np.ndarray  # i8 [slots, N_QI]: request slots (reused through the free stack)
    qf: np.ndarray  # f8 [slots, N_QF]
    q_hist: np.ndarray  # i8 [slots, N_ITL_BUCKETS]: gaps accumulated before a preemption
    q_snap: np.ndarray  # i8 [slots, N_ITL_BUCKETS]: replica histogram when decoding (re)started
    free: np.ndarray  # i8 [slots]: free slot stack (gi[G_FREE_TOP] entries)
    ri: np.ndarray  # i8 [replicas, N_RI]
    rf: np.ndarray  # f8 [replicas, N_RF]
    running: np.ndarray  # i8 [replicas, max_num_seqs]: running slots in scheduling order
    wq_head: np.ndarray  # i8 [replicas, tenants]: waiting list of each tenant
    wq_tail: np.ndarray  # i8 [replicas, tenants]
    tenant_finish: np.ndarray  # f8 [replicas, tenants]: finish tag of each tenant's last request
    cum_hist: np.ndarray  # i8 [replicas, N_ITL_BUCKETS]: durations of all its iterations
    pi: np.ndarray  # i8 [pools, N_PI]
    coeffs: np.ndarray  # f8 [pools, N_COEFFS]: step-time coefficients
    capability: np.ndarray  # f8 [pools]: answer quality relative to the strongest tier, [0, 1]
    tf: np.ndarray  # f8 [tenants, N_TF]
    members: np.ndarray  # i8 [tiers, replica slots per tier]: the SERVING replicas of each tier
    tier_i: np.ndarray  # i8 [tiers, N_TIER_I]
    gf: np.ndarray  # f8 [N_GF]
    gi: np.ndarray  # i8 [N_GI]
    tree_t: np.ndarray  # f8 [2 * leaves]: min-tree over the replicas' next event times
    tree_r: np.ndarray  # i8 [2 * leaves]
    itl_edges: np.ndarray  # f8: ITL bucket upper bounds
    scratch: np.ndarray  # i8: decoders by iterations left in their blocks
    out: np.ndarray  # REQUEST_EVENT_DTYPE: events of the requests that ended in this advance


class Arrivals(NamedTuple):
    """Requests arriving during one advance, sorted by time, already truncated and tiered."""

    t: np.ndarray  # f8
    prompt: np.ndarray  # i8, after truncation
    orig_prompt: np.ndarray  # i8
    requested: np.ndarray  # i8
    tenant: np.ndarray  # i8
    intended_tier: np.ndarray  # i8
    tier: np.ndarray  # i8: where the router sends it
    difficulty: np.ndarray  # f8
    truncated: np.ndarray  # bool


class Failures(NamedTuple):
    """Replica failures starting during one advance, sorted by time."""

    t: np.ndarray  # f8
    replica: np.ndarray  # i8
    duration: np.ndarray  # f8


def _jit(func):
    """Compile a kernel function: cached, without reference counting (see the module doc)."""
    return njit(cache=True, _nrt=False)(func)


# ---------------------------------------------------------------------------------------------
# Small helpers


@_jit
def ceil_div(a, b):
    """Integer ceiling of ``a / b`` for ``b > 0``."""
    return -((-a) // b)


@_jit
def quality_loss(difficulty, capability):
    """Expected quality lost when a tier of ``capability`` serves a request of ``difficulty``:
    0 up to ``difficulty == capability`` (the tier answers as well as the strongest), rising
    linearly to 1 at ``difficulty == 1``. A tier of capability 1 loses nothing."""
    if capability >= 1.0 or difficulty <= capability:
        return 0.0
    return min(1.0, (difficulty - capability) / (1.0 - capability))


@_jit
def tree_set(fleet, r, t):
    """Set replica ``r``'s next event time and repair the min-tree above it."""
    fleet.rf[r, R_NEXT_T] = t
    tt, tr = fleet.tree_t, fleet.tree_r
    i = tt.shape[0] // 2 + r
    tt[i] = t
    i //= 2
    while i >= 1:
        child = 2 * i if tt[2 * i] <= tt[2 * i + 1] else 2 * i + 1
        tt[i] = tt[child]
        tr[i] = tr[child]
        i //= 2


# ---------------------------------------------------------------------------------------------
# Runs of iterations: arithmetic progressions inside a max


@_jit
def run_pieces(a, alpha, b, beta, k):
    """Split ``max(a + alpha*i, b + beta*i)``, ``i in [0, k)``, into two linear pieces.

    Returns ``(a1, s1, n1, a2, s2, n2)``: the first ``n1`` iterations last ``a1 + s1*i``, the next
    ``n2`` last ``a2 + s2*i`` (``i`` counted from the start of each piece).
    """
    if (a >= b and alpha >= beta) or k <= 0:
        return a, alpha, k, 0.0, 0.0, 0
    if b >= a and beta >= alpha:
        return b, beta, k, 0.0, 0.0, 0
    if a > b:  # the GPU line starts above and the CPU line overtakes it
        n1 = min(k, int(np.ceil((a - b) / (beta - alpha))))
        return a, alpha, n1, b + beta * n1, beta, k - n1
    n1 = min(k, int(np.ceil((b - a) / (alpha - beta))))
    return b, beta, n1, a + alpha * n1, alpha, k - n1


@_jit
def ap_sum(a, s, n):
    """Sum of ``a + s*i`` for ``i in [0, n)``."""
    return n * a + s * (n * (n - 1) / 2.0)


@_jit
def ap_cover(a, s, n, delta):
    """Smallest ``j`` in ``[1, n]`` with ``ap_sum(a, s, j) >= delta`` (``n`` if none)."""
    if delta <= 0.0:
        return 1
    if s <= 0.0:
        j = int(np.ceil(delta / a))
    else:
        h = a - s / 2.0
        j = int(np.ceil((-h + np.sqrt(h * h + 2.0 * s * delta)) / s))
    j = max(1, min(j, n))
    while j > 1 and ap_sum(a, s, j - 1) >= delta:  # repair the float rounding of the root
        j -= 1
    while j < n and ap_sum(a, s, j) < delta:
        j += 1
    return j


@_jit
def ap_histogram(hist, edges, a, s, n):
    """Add the ``n`` values ``a + s*i`` (``s >= 0``) to ``hist`` (bucket upper bounds ``edges``)."""
    if n <= 0:
        return
    below = 0  # values <= the previous edge
    for e in range(edges.shape[0]):
        edge = edges[e]
        if a > edge:
            count = 0
        elif s <= 0.0:
            count = n
        else:
            x = (edge - a) / s
            count = n if x >= n - 1 else int(x) + 1
        hist[e] += count - below
        below = count
        if below == n:
            return
    hist[edges.shape[0]] += n - below


@_jit
def planned_pieces(fleet, r):
    """The two linear pieces of replica ``r``'s planned run."""
    rf = fleet.rf
    return run_pieces(
        rf[r, R_RUN_A], rf[r, R_RUN_ALPHA], rf[r, R_RUN_B], rf[r, R_RUN_BETA], fleet.ri[r, R_RUN_K]
    )


@_jit
def run_duration(fleet, r):
    """Seconds of replica ``r``'s planned run."""
    a1, s1, n1, a2, s2, n2 = planned_pieces(fleet, r)
    return ap_sum(a1, s1, n1) + ap_sum(a2, s2, n2)


@_jit
def cut_run(fleet, r, t):
    """End replica ``r``'s decode run (if it is in one) with the iteration in progress at ``t``."""
    ri, rf = fleet.ri, fleet.rf
    if not ri[r, R_RUN_DECODE_ONLY]:
        return
    a1, s1, n1, a2, s2, n2 = planned_pieces(fleet, r)
    delta = t - rf[r, R_RUN_T0]
    first = ap_sum(a1, s1, n1)
    if delta <= first or n2 == 0:
        j = ap_cover(a1, s1, n1, delta)
    else:
        j = n1 + ap_cover(a2, s2, n2, delta - first)
    if j < ri[r, R_RUN_K]:
        ri[r, R_RUN_K] = j
        tree_set(fleet, r, rf[r, R_RUN_T0] + run_duration(fleet, r))


# ---------------------------------------------------------------------------------------------
# KV blocks of a decode run


@_jit
def blocks_for_iterations(cnt, bt, k):
    """New blocks the decoders need to run ``k`` iterations: ``cnt[s]`` decoders can run ``s``
    more iterations in the blocks they hold, then need one more block every ``bt``."""
    total = 0
    for s in range(bt + 1):
        if cnt[s] > 0 and k > s:
            total += cnt[s] * ceil_div(k - s, bt)
    return total


@_jit
def max_iterations_for_blocks(cnt, bt, free, k_cap):
    """Most iterations (<= ``k_cap``) whose new blocks fit in ``free`` (binary search)."""
    if blocks_for_iterations(cnt, bt, k_cap) <= free:
        return k_cap
    lo, hi = 0, k_cap  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks_for_iterations(cnt, bt, mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------------
# Output


@_jit
def emit_slot(fleet, s, t_end, outcome, reason):
    """Write the event of the request in slot ``s`` and free the slot (the caller has already
    taken it off its replica's lists and KV blocks)."""
    qi, qf = fleet.qi, fleet.qf
    rec = fleet.out[fleet.gi[G_N_OUT]]
    fleet.gi[G_N_OUT] += 1
    r = qi[s, Q_REPLICA]
    generated = qi[s, Q_GENERATED]
    rec["t_arrival"] = qf[s, Q_T_ARRIVAL]
    rec["t_end"] = t_end
    rec["tenant"] = qi[s, Q_TENANT]
    rec["intended_tier"] = qi[s, Q_INTENDED_TIER]
    rec["tier"] = qi[s, Q_TIER]
    rec["replica"] = r
    rec["outcome"] = outcome
    rec["reason"] = reason
    rec["prompt_tokens"] = qi[s, Q_PROMPT]
    rec["original_prompt_tokens"] = qi[s, Q_ORIG_PROMPT]
    rec["output_tokens"] = generated
    rec["requested_output_tokens"] = qi[s, Q_REQUESTED]
    rec["truncated"] = qi[s, Q_TRUNCATED] != 0
    rec["preemptions"] = qi[s, Q_PREEMPTIONS]
    rec["difficulty"] = qf[s, Q_DIFFICULTY]
    loss = 0.0
    if outcome == _SERVED:
        loss = quality_loss(qf[s, Q_DIFFICULTY], fleet.capability[fleet.ri[r, R_POOL]])
    rec["quality_loss"] = loss
    no_token = np.nan
    rec["ttft_s"] = qf[s, Q_T_FIRST] - qf[s, Q_T_ARRIVAL] if generated > 0 else no_token
    rec["e2e_s"] = t_end - qf[s, Q_T_ARRIVAL] if generated > 0 else no_token
    rec["itl_max_s"] = qf[s, Q_ITL_MAX] if generated > 1 else no_token
    decoding = qi[s, Q_PHASE] == DECODE
    for b in range(N_ITL_BUCKETS):
        count = fleet.q_hist[s, b]
        if decoding:
            count += fleet.cum_hist[r, b] - fleet.q_snap[s, b]
        rec["itl_hist"][b] = count
    fleet.ri[r, R_OUTSTANDING] -= 1
    fleet.gi[G_OUTSTANDING] -= 1
    fleet.free[fleet.gi[G_FREE_TOP]] = s
    fleet.gi[G_FREE_TOP] += 1


@_jit
def emit_turned_away(fleet, arr, j, reason):
    """Write the event of arrival ``j``, rejected before it reached a replica's queue."""
    rec = fleet.out[fleet.gi[G_N_OUT]]
    fleet.gi[G_N_OUT] += 1
    rec["t_arrival"] = arr.t[j]
    rec["t_end"] = arr.t[j]
    rec["tenant"] = arr.tenant[j]
    rec["intended_tier"] = arr.intended_tier[j]
    rec["tier"] = -1
    rec["replica"] = -1
    rec["outcome"] = _REJECTED
    rec["reason"] = reason
    rec["prompt_tokens"] = arr.prompt[j]
    rec["original_prompt_tokens"] = arr.orig_prompt[j]
    rec["output_tokens"] = 0
    rec["requested_output_tokens"] = arr.requested[j]
    rec["truncated"] = arr.truncated[j]
    rec["preemptions"] = 0
    rec["difficulty"] = arr.difficulty[j]
    rec["quality_loss"] = 0.0
    rec["ttft_s"] = np.nan
    rec["e2e_s"] = np.nan
    rec["itl_max_s"] = np.nan
    for b in range(N_ITL_BUCKETS):
        rec["itl_hist"][b] = 0


@_jit
def start_decoding(fleet, r, s, t):
    """Request ``s`` produced a token at ``t`` after its prefill or a pause; it now decodes."""
    qi, qf = fleet.qi, fleet.qf
    if qi[s, Q_GENERATED] == 0:
        qf[s, Q_T_FIRST] = t
    else:  # the gap across the pause is not in the replica histogram
        gap = t - qf[s, Q_T_LAST_TOKEN]
        fleet.q_hist[s, np.searchsorted(fleet.itl_edges, gap)] += 1
        qf[s, Q_ITL_MAX] = max(qf[s, Q_ITL_MAX], gap)
    qi[s, Q_GENERATED] += 1
    qf[s, Q_T_LAST_TOKEN] = t
    qi[s, Q_PHASE] = DECODE
    for b in range(N_ITL_BUCKETS):
        fleet.q_snap[s, b] = fleet.cum_hist[r, b]


# ---------------------------------------------------------------------------------------------
# Queues


@_jit
def prompt_blocks(fleet, s):
    """KV blocks the (re)prefill of request ``s`` takes."""
    pool = fleet.ri[fleet.qi[s, Q_REPLICA], R_POOL]
    return ceil_div(fleet.qi[s, Q_PREFILL_TARGET], fleet.pi[pool, P_BLOCK_TOKENS])


@_jit
def wq_push(fleet, r, s, front):
    """Put slot ``s`` in its tenant's waiting list of replica ``r`` (at the front or the back)."""
    qi = fleet.qi
    k = qi[s, Q_TENANT]
    if front:
        qi[s, Q_NEXT] = fleet.wq_head[r, k]
        fleet.wq_head[r, k] = s
        if fleet.wq_tail[r, k] < 0:
            fleet.wq_tail[r, k] = s
    else:
        qi[s, Q_NEXT] = -1
        if fleet.wq_tail[r, k] < 0:
            fleet.wq_head[r, k] = s
        else:
            qi[fleet.wq_tail[r, k], Q_NEXT] = s
        fleet.wq_tail[r, k] = s
    fleet.ri[r, R_N_WAITING] += 1
    fleet.ri[r, R_WAITING_BLOCKS] += prompt_blocks(fleet, s)


@_jit
def wq_unlink(fleet, r, s, prev):
    """Remove slot ``s`` (after ``prev``, -1 if first) from its tenant's waiting list."""
    qi = fleet.qi
    k = qi[s, Q_TENANT]
    if prev < 0:
        fleet.wq_head[r, k] = qi[s, Q_NEXT]
    else:
        qi[prev, Q_NEXT] = qi[s, Q_NEXT]
    if fleet.wq_tail[r, k] == s:
        fleet.wq_tail[r, k] = prev
    fleet.ri[r, R_N_WAITING] -= 1
    fleet.ri[r, R_WAITING_BLOCKS] -= prompt_blocks(fleet, s)


@_jit
def wq_pick(fleet, r):
    """The waiting request to admit next: the smallest fair-queueing start tag (-1 if none)."""
    best = -1
    for k in range(fleet.wq_head.shape[1]):
        s = fleet.wq_head[r, k]
        if s >= 0 and (best < 0 or fleet.qf[s, Q_TAG] < fleet.qf[best, Q_TAG]):
            best = s
    return best


@_jit
def sw_push(fleet, r, s):
    """Append slot ``s`` to replica ``r``'s swapped list."""
    qi, ri = fleet.qi, fleet.ri
    qi[s, Q_NEXT] = -1
    if ri[r, R_SW_TAIL] < 0:
        ri[r, R_SW_HEAD] = s
    else:
        qi[ri[r, R_SW_TAIL], Q_NEXT] = s
    ri[r, R_SW_TAIL] = s
    ri[r, R_N_SWAPPED] += 1


@_jit
def sw_pop(fleet, r):
    """Take the first slot off replica ``r``'s swapped list."""
    qi, ri = fleet.qi, fleet.ri
    s = ri[r, R_SW_HEAD]
    ri[r, R_SW_HEAD] = qi[s, Q_NEXT]
    if ri[r, R_SW_HEAD] < 0:
        ri[r, R_SW_TAIL] = -1
    ri[r, R_N_SWAPPED] -= 1
    return s


@_jit
def requeue_for_recompute(fleet, r, s):
    """Drop the KV of slot ``s`` (already off the GPU pool) and queue it first to recompute."""
    qi = fleet.qi
    qi[s, Q_BLOCKS] = 0
    qi[s, Q_COMPUTED] = 0
    qi[s, Q_CHUNK] = 0
    qi[s, Q_PREFILL_TARGET] = qi[s, Q_PROMPT] + qi[s, Q_GENERATED]
    qi[s, Q_PHASE] = PREFILL
    wq_push(fleet, r, s, True)


@_jit
def preempt(fleet, r, s):
    """Take running request ``s`` off replica ``r``'s GPU (the caller drops it from the running
    list): swapped out when its pool preempts by swap and swap space allows, else queued for
    recompute. Returns the PCIe seconds a swap adds to the iteration."""
    qi, ri = fleet.qi, fleet.ri
    p = ri[r, R_POOL]
    ri[r, R_PREEMPTIONS] += 1
    qi[s, Q_PREEMPTIONS] += 1
    ri[r, R_USED_BLOCKS] -= qi[s, Q_BLOCKS]
    if qi[s, Q_PHASE] == DECODE:
        for b in range(N_ITL_BUCKETS):
            fleet.q_hist[s, b] += fleet.cum_hist[r, b] - fleet.q_snap[s, b]
        fits = ri[r, R_SWAP_USED] + qi[s, Q_BLOCKS] <= fleet.pi[p, P_SWAP_BLOCKS]
        if fleet.pi[p, P_SWAP_PREEMPTION] and fits:
            ri[r, R_SWAP_USED] += qi[s, Q_BLOCKS]
            qi[s, Q_PHASE] = RESUME
            sw_push(fleet, r, s)
            kv_tokens = qi[s, Q_PROMPT] + qi[s, Q_GENERATED] - 1
            return kv_tokens * fleet.coeffs[p, SWAP_S_PER_TOKEN]
    requeue_for_recompute(fleet, r, s)
    return 0.0


# ---------------------------------------------------------------------------------------------
# Scheduling point


@_jit
def schedule_running(fleet, r, t):
    """Give this iteration's tokens and blocks to the running requests in order, preempting from
    the back when KV blocks run out. Returns (token budget left, prompt tokens, attention pairs,
    swap seconds, whether anything was preempted)."""
    qi, qf, ri = fleet.qi, fleet.qf, fleet.ri
    p = ri[r, R_POOL]
    bt = fleet.pi[p, P_BLOCK_TOKENS]
    budget = fleet.pi[p, P_MAX_BATCHED_TOKENS]
    prefill = 0
    pairs = 0.0
    swap_s = 0.0
    preempted = False
    n = ri[r, R_N_RUNNING]
    i = 0
    w = 0
    while i < n:
        s = fleet.running[r, i]
        if qi[s, Q_PHASE] == PREFILL:
            if qi[s, Q_GENERATED] == 0 and qf[s, Q_DEADLINE] <= t:  # the client gave up
                ri[r, R_USED_BLOCKS] -= qi[s, Q_BLOCKS]
                emit_slot(fleet, s, t, _ABORTED, _TIMEOUT)
                i += 1
                continue
            chunk = min(qi[s, Q_PREFILL_TARGET] - qi[s, Q_COMPUTED], budget)
            need = ceil_div(qi[s, Q_COMPUTED] + chunk, bt) - qi[s, Q_BLOCKS]
        else:
            chunk = 0
            need = 1 if bt * qi[s, Q_BLOCKS] < qi[s, Q_PROMPT] + qi[s, Q_GENERATED] else 0
        while need > ri[r, R_CAP_BLOCKS] - ri[r, R_USED_BLOCKS] and n - 1 > i:
            n -= 1
            swap_s += preempt(fleet, r, fleet.running[r, n])
            preempted = True
        if need > ri[r, R_CAP_BLOCKS] - ri[r, R_USED_BLOCKS]:
            swap_s += preempt(fleet, r, s)
            preempted = True
            break
        qi[s, Q_BLOCKS] += need
        ri[r, R_USED_BLOCKS] += need
        if qi[s, Q_PHASE] == PREFILL:
            qi[s, Q_CHUNK] = chunk
            budget -= chunk
            prefill += chunk
            pairs += chunk * (qi[s, Q_COMPUTED] + (chunk + 1) / 2.0)
        else:
            budget -= 1
        fleet.running[r, w] = s
        w += 1
        i += 1
    ri[r, R_N_RUNNING] = w
    return budget, prefill, pairs, swap_s, preempted


@_jit
def swap_in(fleet, r, limit, budget, wm):
    """Bring swapped requests back (FIFO) while blocks allow. Returns (token budget left, swap
    seconds, whether the swapped queue still waits for room)."""
    qi, ri = fleet.qi, fleet.ri
    p = ri[r, R_POOL]
    bt = fleet.pi[p, P_BLOCK_TOKENS]
    swap_s = 0.0
    while ri[r, R_SW_HEAD] >= 0:
        s = ri[r, R_SW_HEAD]
        need = ceil_div(qi[s, Q_PROMPT] + qi[s, Q_GENERATED], bt)
        free = ri[r, R_CAP_BLOCKS] - ri[r, R_USED_BLOCKS]
        if ri[r, R_N_RUNNING] == 0 and need > free:  # the pool shrank under it (offload knob)
            sw_pop(fleet, r)
            ri[r, R_SWAP_USED] -= qi[s, Q_BLOCKS]
            requeue_for_recompute(fleet, r, s)
            continue
        full = ri[r, R_N_RUNNING] >= limit or budget < 1
        if full or (ri[r, R_N_RUNNING] > 0 and need > free - wm):
            return budget, swap_s, True
        sw_pop(fleet, r)
        ri[r, R_SWAP_USED] -= qi[s, Q_BLOCKS]
        kv_tokens = qi[s, Q_PROMPT] + qi[s, Q_GENERATED] - 1
        swap_s += kv_tokens * fleet.coeffs[p, SWAP_S_PER_TOKEN]
        qi[s, Q_BLOCKS] = need
        ri[r, R_USED_BLOCKS] += need
        fleet.running[r, ri[r, R_N_RUNNING]] = s
        ri[r, R_N_RUNNING] += 1
        budget -= 1
    return budget, swap_s, False


@_jit
def admit_waiting(fleet, r, t, limit, budget, wm, prefill, pairs):
    """Admit waiting prompts in fair-queueing order while a sequence slot, the token budget and
    KV blocks above the watermark allow. Returns (prompt tokens, pairs, blocked)."""
    qi, qf, ri = fleet.qi, fleet.qf, fleet.ri
    p = ri[r, R_POOL]
    bt = fleet.pi[p, P_BLOCK_TOKENS]
    chunked = fleet.pi[p, P_CHUNKED_PREFILL] != 0
    while budget > 0:
        s = wq_pick(fleet, r)
        if s < 0:
            return prefill, pairs, False
        if qi[s, Q_GENERATED] == 0 and qf[s, Q_DEADLINE] <= t:
            wq_unlink(fleet, r, s, -1)
            emit_slot(fleet, s, qf[s, Q_DEADLINE], _ABORTED, _TIMEOUT)
            continue
        if ri[r, R_N_RUNNING] >= limit:
            return prefill, pairs, True
        remaining = qi[s, Q_PREFILL_TARGET]
        if remaining <= budget or (prefill == 0 and not chunked):
            chunk = remaining  # without chunking, a prompt above the budget runs alone
        elif chunked:
            chunk = budget
        else:
            return prefill, pairs, False
        need = ceil_div(chunk, bt)
        if need > ri[r, R_CAP_BLOCKS] - ri[r, R_USED_BLOCKS] - wm:
            if ri[r, R_N_RUNNING] == 0 and ceil_div(remaining, bt) > ri[r, R_CAP_BLOCKS] - wm:
                wq_unlink(fleet, r, s, -1)  # it can never fit
                emit_slot(fleet, s, t, _REJECTED, _TOO_LONG)
                continue
            return prefill, pairs, True
        wq_unlink(fleet, r, s, -1)
        fleet.rf[r, R_VTIME] = max(fleet.rf[r, R_VTIME], qf[s, Q_TAG])
        qi[s, Q_BLOCKS] = need
        qi[s, Q_CHUNK] = chunk
        ri[r, R_USED_BLOCKS] += need
        fleet.running[r, ri[r, R_N_RUNNING]] = s
        ri[r, R_N_RUNNING] += 1
        budget -= chunk
        prefill += chunk
        pairs += chunk * (chunk + 1) / 2.0
    return prefill, pairs, False


@_jit
def plan_run(fleet, r, t, prefill, pairs, swap_s):
    """Plan replica ``r``'s next run from ``t`` and set its event time."""
    qi, ri, rf = fleet.qi, fleet.ri, fleet.rf
    p = ri[r, R_POOL]
    coeffs = fleet.coeffs[p]
    bt = fleet.pi[p, P_BLOCK_TOKENS]
    n_dec = 0
    ctx = 0.0
    for i in range(ri[r, R_N_RUNNING]):
        s = fleet.running[r, i]
        if qi[s, Q_PHASE] != PREFILL:
            n_dec += 1
            ctx += qi[s, Q_PROMPT] + qi[s, Q_GENERATED]
    rf[r, R_RUN_T0] = t
    ri[r, R_RUN_DECODERS] = n_dec
    ri[r, R_RUN_PREFILL] = prefill
    ri[r, R_RUN_DECODE_ONLY] = 0
    if n_dec == 0 and prefill == 0:
        ri[r, R_RUN_K] = 0
        tree_set(fleet, r, np.inf)
        return
    f = fleet.gf[K_OFFLOAD]
    peak = ri[r, R_USED_BLOCKS]
    if prefill > 0 or swap_s > 0.0:
        dur = iteration_time(coeffs, prefill, pairs, n_dec, (1.0 - f) * ctx, f * ctx) + swap_s
        ri[r, R_RUN_K] = 1
        rf[r, R_RUN_A] = dur
        rf[r, R_RUN_ALPHA] = 0.0
        rf[r, R_RUN_B] = dur
        rf[r, R_RUN_BETA] = 0.0
    else:
        cnt = fleet.scratch
        for i in range(bt + 1):
            cnt[i] = 0
        k = np.iinfo(np.int64).max
        for i in range(ri[r, R_N_RUNNING]):
            s = fleet.running[r, i]
            if qi[s, Q_PHASE] == DECODE:
                k = min(k, qi[s, Q_TARGET] - qi[s, Q_GENERATED])
                cnt[bt * qi[s, Q_BLOCKS] - qi[s, Q_PROMPT] - qi[s, Q_GENERATED] + 1] += 1
        k = max_iterations_for_blocks(cnt, bt, ri[r, R_CAP_BLOCKS] - ri[r, R_USED_BLOCKS], k)
        peak += blocks_for_iterations(cnt, bt, k)
        gpu_rate = coeffs[GPU_ATTN_S_PER_CTX_TOKEN] * (1.0 - f)
        cpu_rate = coeffs[CPU_ATTN_S_PER_CTX_TOKEN] * f
        ri[r, R_RUN_K] = k
        ri[r, R_RUN_DECODE_ONLY] = 1
        rf[r, R_RUN_A] = coeffs[OVERHEAD_S] + gpu_fixed_time(coeffs, n_dec, 0.0) + gpu_rate * ctx
        rf[r, R_RUN_ALPHA] = gpu_rate * n_dec
        rf[r, R_RUN_B] = coeffs[OVERHEAD_S] + cpu_rate * ctx
        rf[r, R_RUN_BETA] = cpu_rate * n_dec
    ri[r, R_KV_PEAK] = max(ri[r, R_KV_PEAK], peak)
    tree_set(fleet, r, t + run_duration(fleet, r))


@_jit
def schedule(fleet, r, t):
    """Scheduling point of replica ``r`` at ``t`` (vLLM's scheduler step), then plan the run."""
    ri = fleet.ri
    p = ri[r, R_POOL]
    limit = max(1, int(fleet.pi[p, P_MAX_NUM_SEQS] * fleet.gf[K_SEQS_SCALE]))
    wm = int(fleet.gf[K_WATERMARK] * ri[r, R_CAP_BLOCKS])
    budget, prefill, pairs, swap_s, preempted = schedule_running(fleet, r, t)
    blocked = False
    if not preempted:  # like vLLM, nothing new joins in a step that had to preempt
        budget, swap_in_s, blocked = swap_in(fleet, r, limit, budget, wm)
        swap_s += swap_in_s
        if ri[r, R_SW_HEAD] < 0:
            prefill, pairs, blocked = admit_waiting(fleet, r, t, limit, budget, wm, prefill, pairs)
    ri[r, R_BLOCKED] = blocked
    ri[r, R_STEPS] += 1
    plan_run(fleet, r, t, prefill, pairs, swap_s)


# ---------------------------------------------------------------------------------------------
# End of a run


@_jit
def account_usage(fleet, r, t, used_from, used_to):
    """Add the time since the last account to the KV integral (a trapezoid: usage grows during a
    run) and, while a run is planned, to the busy time."""
    rf = fleet.rf
    span = t - rf[r, R_STAT_T]
    rf[r, R_KV_INTEGRAL] += 0.5 * (used_from + used_to) * span
    if fleet.ri[r, R_RUN_K] > 0:
        rf[r, R_BUSY_S] += span
    rf[r, R_STAT_T] = t


@_jit
def finish_run(fleet, r, t):
    """Apply replica ``r``'s planned run, which ends at ``t``: tokens, blocks, histograms, ends."""
    qi, qf, ri = fleet.qi, fleet.qf, fleet.ri
    k = ri[r, R_RUN_K]
    used_start = ri[r, R_USED_BLOCKS]
    if k == 0:
        account_usage(fleet, r, t, used_start, used_start)
        return
    bt = fleet.pi[ri[r, R_POOL], P_BLOCK_TOKENS]
    a1, s1, n1, a2, s2, n2 = planned_pieces(fleet, r)
    longest = a1 + s1 * (n1 - 1)
    if n2 > 0:
        longest = max(longest, a2 + s2 * (n2 - 1))
    ap_histogram(fleet.cum_hist[r], fleet.itl_edges, a1, s1, n1)
    ap_histogram(fleet.cum_hist[r], fleet.itl_edges, a2, s2, n2)
    ri[r, R_ITERATIONS] += k
    ri[r, R_DECODE_TOKENS] += ri[r, R_RUN_DECODERS] * k
    ri[r, R_PREFILL_TOKENS] += ri[r, R_RUN_PREFILL]
    freed = 0
    w = 0
    for i in range(ri[r, R_N_RUNNING]):
        s = fleet.running[r, i]
        phase = qi[s, Q_PHASE]
        if phase == DECODE:
            qi[s, Q_GENERATED] += k
            qf[s, Q_T_LAST_TOKEN] = t
            qf[s, Q_ITL_MAX] = max(qf[s, Q_ITL_MAX], longest)
            blocks = ceil_div(qi[s, Q_PROMPT] + qi[s, Q_GENERATED] - 1, bt)
            ri[r, R_USED_BLOCKS] += blocks - qi[s, Q_BLOCKS]
            qi[s, Q_BLOCKS] = blocks
        elif phase == RESUME:
            start_decoding(fleet, r, s, t)
        elif qi[s, Q_CHUNK] > 0:
            qi[s, Q_COMPUTED] += qi[s, Q_CHUNK]
            qi[s, Q_CHUNK] = 0
            if qi[s, Q_COMPUTED] >= qi[s, Q_PREFILL_TARGET]:
                start_decoding(fleet, r, s, t)
        if qi[s, Q_PHASE] == DECODE and qi[s, Q_GENERATED] >= qi[s, Q_TARGET]:
            reason = _STOP if qi[s, Q_TARGET] >= qi[s, Q_REQUESTED] else _LENGTH
            ri[r, R_USED_BLOCKS] -= qi[s, Q_BLOCKS]
            freed += qi[s, Q_BLOCKS]
            emit_slot(fleet, s, t, _SERVED, reason)
            continue
        fleet.running[r, w] = s
        w += 1
    ri[r, R_N_RUNNING] = w
    account_usage(fleet, r, t, used_start, ri[r, R_USED_BLOCKS] + freed)


# ---------------------------------------------------------------------------------------------
# Failures


@_jit
def evict(fleet, r, t, outcome, reason):
    """End every request on replica ``r`` at ``t`` with ``outcome`` and ``reason``, and drop its
    planned run (the caller sets its next event)."""
    qi, ri = fleet.qi, fleet.ri
    account_usage(fleet, r, t, ri[r, R_USED_BLOCKS], ri[r, R_USED_BLOCKS])
    for i in range(ri[r, R_N_RUNNING]):
        emit_slot(fleet, fleet.running[r, i], t, outcome, reason)
    while ri[r, R_SW_HEAD] >= 0:
        emit_slot(fleet, sw_pop(fleet, r), t, outcome, reason)
    for k in range(fleet.wq_head.shape[1]):
        s = fleet.wq_head[r, k]
        while s >= 0:
            nxt = qi[s, Q_NEXT]
            emit_slot(fleet, s, t, outcome, reason)
            s = nxt
        fleet.wq_head[r, k] = -1
        fleet.wq_tail[r, k] = -1
    for col in (R_N_RUNNING, R_N_WAITING, R_WAITING_BLOCKS, R_USED_BLOCKS, R_SWAP_USED):
        ri[r, col] = 0
    for col in (R_BLOCKED, R_RUN_K, R_RUN_DECODE_ONLY):
        ri[r, col] = 0


@_jit
def fail_replica(fleet, r, t, duration):
    """Replica ``r`` goes down at ``t`` for ``duration`` seconds: every request on it fails. A
    stopped slot has nothing to lose; a draining replica is drained by its failure."""
    ri = fleet.ri
    if ri[r, R_STATE] == STOPPED:
        return
    if not ri[r, R_HEALTHY]:  # already down: the outage lasts until the later recovery
        tree_set(fleet, r, max(fleet.rf[r, R_NEXT_T], t + duration))
        return
    evict(fleet, r, t, _FAILED, _REPLICA_FAILURE)
    ri[r, R_HEALTHY] = 0
    if ri[r, R_STATE] == DRAINING:
        stop(fleet, r, t)
    tree_set(fleet, r, t + duration)


@_jit
def replica_event(fleet, r, t):
    """The event of replica ``r`` at ``t``: a recovery, or the end of its run (after which a
    draining replica that is empty stops)."""
    ri = fleet.ri
    if not ri[r, R_HEALTHY]:
        ri[r, R_HEALTHY] = 1
        fleet.rf[r, R_STAT_T] = t
        tree_set(fleet, r, np.inf)
        return
    finish_run(fleet, r, t)
    schedule(fleet, r, t)
    if ri[r, R_STATE] == DRAINING and ri[r, R_OUTSTANDING] == 0:
        stop(fleet, r, t)


# ---------------------------------------------------------------------------------------------
# Lifecycle


@_jit
def update_members(fleet, tier):
    """Rebuild the router's list of ``tier``'s SERVING replicas (in slot order)."""
    ri = fleet.ri
    n = 0
    for r in range(ri.shape[0]):
        if ri[r, R_TIER] == tier and ri[r, R_STATE] == SERVING:
            fleet.members[tier, n] = r
            n += 1
    fleet.tier_i[tier, TIER_N_MEMBERS] = n


@_jit
def stop(fleet, r, t):
    """Replica ``r``, empty, stops at ``t``: its provisioned period ends."""
    ri = fleet.ri
    serving = ri[r, R_STATE] == SERVING
    ri[r, R_STATE] = STOPPED
    fleet.rf[r, R_UP_S] += t - fleet.rf[r, R_UP_T0]
    fleet.gi[G_STOPS] += 1
    if serving:
        update_members(fleet, ri[r, R_TIER])


@_jit
def transition(fleet, r, t, state, outcome, reason):
    """Move replica ``r`` to lifecycle ``state`` at ``t``.

    PROVISIONING starts a provisioned period of a stopped slot; SERVING adds a provisioned or
    draining replica to the router; DRAINING takes a serving replica off the router (it stops
    at once if it is empty); STOPPED ends the requests still on the replica with ``outcome`` and
    ``reason`` (a drain timeout, an interruption) and stops it.
    """
    ri, rf = fleet.ri, fleet.rf
    old = ri[r, R_STATE]
    if state == PROVISIONING:
        rf[r, R_UP_T0] = t
        rf[r, R_VTIME] = 0.0  # fair-queueing tags restart on an empty replica
        for k in range(fleet.tenant_finish.shape[1]):
            fleet.tenant_finish[r, k] = 0.0
        ri[r, R_STATE] = PROVISIONING
    elif state == SERVING:
        ri[r, R_STATE] = SERVING
        update_members(fleet, ri[r, R_TIER])
    elif state == DRAINING:
        ri[r, R_STATE] = DRAINING
        if old == SERVING:
            update_members(fleet, ri[r, R_TIER])
        if ri[r, R_OUTSTANDING] == 0:
            stop(fleet, r, t)
    else:
        if ri[r, R_HEALTHY]:  # (a failed replica holds nothing and keeps its recovery event)
            evict(fleet, r, t, outcome, reason)
            tree_set(fleet, r, np.inf)
        stop(fleet, r, t)


# ---------------------------------------------------------------------------------------------
# Arrivals


@_jit
def pick_in_tier(fleet, tier):
    """A healthy replica of ``tier`` chosen by the routing policy (-1 if none)."""
    ri = fleet.ri
    n = fleet.tier_i[tier, TIER_N_MEMBERS]
    if n == 0:
        return -1
    start = fleet.tier_i[tier, TIER_RR]
    fleet.tier_i[tier, TIER_RR] = (start + 1) % n  # also rotates ties between equal replicas
    policy = fleet.gi[G_POLICY]
    best = -1
    best_score = np.inf
    for q in range(n):
        r = fleet.members[tier, (start + q) % n]
        if not ri[r, R_HEALTHY]:
            continue
        if policy == ROUND_ROBIN:
            return r
        if policy == LEAST_OUTSTANDING:
            score = float(ri[r, R_OUTSTANDING])
        else:  # KV_AWARE: KV in use plus what the queued prompts will take, per block of capacity
            used = ri[r, R_USED_BLOCKS] + ri[r, R_WAITING_BLOCKS]
            score = used / max(ri[r, R_CAP_BLOCKS], 1)
        if score < best_score:
            best = r
            best_score = score
    return best


@_jit
def route(fleet, tier, intended):
    """The replica for a request routed to ``tier``. With fallback, a tier without a healthy
    replica passes the request to its intended tier, then to the other tiers in order."""
    r = pick_in_tier(fleet, tier)
    if r >= 0 or not fleet.gi[G_FALLBACK]:
        return r
    if intended != tier:
        r = pick_in_tier(fleet, intended)
        if r >= 0:
            return r
    for other in range(fleet.tier_i.shape[0]):
        if other != tier and other != intended:
            r = pick_in_tier(fleet, other)
            if r >= 0:
                return r
    return -1


@_jit
def admitted(fleet, t, tenant):
    """Gateway admission: priority shedding, the concurrency limit, then the token bucket."""
    gf = fleet.gf
    if fleet.tf[tenant, T_PRIORITY] < gf[K_SHED_BELOW]:
        return False
    if fleet.gi[G_OUTSTANDING] >= gf[K_CONCURRENCY]:
        return False
    if gf[K_RATE] < np.inf:
        level = min(gf[K_BURST], gf[G_BUCKET] + (t - gf[G_BUCKET_T]) * gf[K_RATE])
        gf[G_BUCKET_T] = t
        if level < 1.0:
            gf[G_BUCKET] = level
            return False
        gf[G_BUCKET] = level - 1.0
    return True


@_jit
def wake(fleet, r, t):
    """A request joined replica ``r``'s queue at ``t``: an idle replica schedules now; a decode
    run ends with its iteration in progress, so that the next scheduling point sees it."""
    if fleet.rf[r, R_NEXT_T] == np.inf:
        tree_set(fleet, r, t)
    elif not fleet.ri[r, R_BLOCKED]:
        cut_run(fleet, r, t)


@_jit
def arrive(fleet, arr, j):
    """Arrival ``j``: admission, routing, the can-it-ever-fit check, then the replica's queue."""
    qi, qf, ri = fleet.qi, fleet.qf, fleet.ri
    t = arr.t[j]
    tenant = arr.tenant[j]
    if not admitted(fleet, t, tenant):
        emit_turned_away(fleet, arr, j, _ADMISSION)
        return
    r = route(fleet, arr.tier[j], arr.intended_tier[j])
    if r < 0:
        emit_turned_away(fleet, arr, j, _NO_REPLICA)
        return
    p = ri[r, R_POOL]
    prompt = arr.prompt[j]
    room = fleet.pi[p, P_MAX_MODEL_LEN] - prompt
    wm = int(fleet.gf[K_WATERMARK] * ri[r, R_CAP_BLOCKS])
    if room < 1 or ceil_div(prompt, fleet.pi[p, P_BLOCK_TOKENS]) > ri[r, R_CAP_BLOCKS] - wm:
        emit_turned_away(fleet, arr, j, _TOO_LONG)
        return
    fleet.gi[G_FREE_TOP] -= 1
    s = fleet.free[fleet.gi[G_FREE_TOP]]
    target = min(arr.requested[j], room)
    if fleet.gf[K_MAX_OUTPUT] < target:
        target = int(fleet.gf[K_MAX_OUTPUT])
    qf[s, Q_T_ARRIVAL] = t
    qf[s, Q_DEADLINE] = t + fleet.tf[tenant, T_PATIENCE]
    qf[s, Q_T_FIRST] = np.nan
    qf[s, Q_T_LAST_TOKEN] = np.nan
    qf[s, Q_ITL_MAX] = 0.0
    qf[s, Q_DIFFICULTY] = arr.difficulty[j]
    qi[s, Q_PROMPT] = prompt
    qi[s, Q_ORIG_PROMPT] = arr.orig_prompt[j]
    qi[s, Q_REQUESTED] = arr.requested[j]
    qi[s, Q_TARGET] = target
    qi[s, Q_PREFILL_TARGET] = prompt
    for col in (Q_GENERATED, Q_COMPUTED, Q_BLOCKS, Q_CHUNK, Q_PREEMPTIONS):
        qi[s, col] = 0
    qi[s, Q_PHASE] = PREFILL
    qi[s, Q_TENANT] = tenant
    qi[s, Q_INTENDED_TIER] = arr.intended_tier[j]
    qi[s, Q_TIER] = ri[r, R_TIER]
    qi[s, Q_REPLICA] = r
    qi[s, Q_TRUNCATED] = arr.truncated[j]
    for b in range(N_ITL_BUCKETS):
        fleet.q_hist[s, b] = 0
    # Start-time fair queueing: a tenant's requests are spaced 1/weight apart in virtual time.
    tag = max(fleet.rf[r, R_VTIME], fleet.tenant_finish[r, tenant])
    fleet.tenant_finish[r, tenant] = tag + 1.0 / fleet.tf[tenant, T_WEIGHT]
    qf[s, Q_TAG] = tag
    wq_push(fleet, r, s, False)
    ri[r, R_OUTSTANDING] += 1
    fleet.gi[G_OUTSTANDING] += 1
    wake(fleet, r, t)


# ---------------------------------------------------------------------------------------------
# Entry points


@_jit
def abort_expired(fleet, until):
    """Abort the waiting requests whose clients gave up by ``until`` (at their deadlines)."""
    qi, qf = fleet.qi, fleet.qf
    for r in range(fleet.ri.shape[0]):
        if fleet.ri[r, R_N_WAITING] == 0:
            continue
        for k in range(fleet.wq_head.shape[1]):
            prev = -1
            s = fleet.wq_head[r, k]
            while s >= 0:
                nxt = qi[s, Q_NEXT]
                if qi[s, Q_GENERATED] == 0 and qf[s, Q_DEADLINE] <= until:
                    wq_unlink(fleet, r, s, prev)
                    emit_slot(fleet, s, qf[s, Q_DEADLINE], _ABORTED, _TIMEOUT)
                else:
                    prev = s
                s = nxt


@_jit
def advance(fleet, arr, fails, until, check_timeouts):
    """Process every event up to ``until``: arrivals ``arr`` and failures ``fails`` (both sorted
    by time, from ``gi[G_NEXT_ARRIVAL]`` and ``gi[G_NEXT_FAILURE]`` on) and the replicas' own
    events. Writes the ended requests to ``fleet.out``.

    Returns early, at its time, after an event that stopped a draining replica
    (``gi[G_STOPS] > 0``); calling again with the same inputs continues.
    """
    gi = fleet.gi
    n_arr = arr.t.shape[0]
    n_fail = fails.t.shape[0]
    ia = gi[G_NEXT_ARRIVAL]
    jf = gi[G_NEXT_FAILURE]
    gi[G_STOPS] = 0
    while True:
        ta = arr.t[ia] if ia < n_arr else np.inf
        tf = fails.t[jf] if jf < n_fail else np.inf
        tr = fleet.tree_t[1]
        t = min(ta, tf, tr)
        if t > until:
            break
        if tf <= tr and tf <= ta:
            fail_replica(fleet, fails.replica[jf], tf, fails.duration[jf])
            jf += 1
        elif tr <= ta:
            replica_event(fleet, fleet.tree_r[1], tr)
        else:
            arrive(fleet, arr, ia)
            ia += 1
        if gi[G_STOPS] > 0:
            until = t
            break
    gi[G_NEXT_ARRIVAL] = ia
    gi[G_NEXT_FAILURE] = jf
    if check_timeouts:
        abort_expired(fleet, until)
    ri = fleet.ri
    for r in range(ri.shape[0]):
        if ri[r, R_HEALTHY]:
            account_usage(fleet, r, until, ri[r, R_USED_BLOCKS], ri[r, R_USED_BLOCKS])
    fleet.gf[G_NOW] = until


@_jit
def interrupt_runs(fleet, t):
    """End every decode run with its iteration in progress at ``t`` (new knobs take effect)."""
    for r in range(fleet.ri.shape[0]):
        if fleet.ri[r, R_HEALTHY]:
            cut_run(fleet, r, t)
