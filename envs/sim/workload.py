"""Request workloads: when requests arrive, how long they are, whose they are, how hard.

An :class:`ArrivalProcess` produces arrival times interval by interval, remembering its state
so successive calls continue one process. Every process runs in *nominal time*; its rate
modulations (:class:`Diurnal`, :class:`FlashCrowd`, :class:`RateCurve`) and its ``rate_scale``
warp nominal time into simulated time (time rescaling), so a modulation works with any process
and keeps its burstiness.
A :class:`Workload` adds lengths (a fitted :class:`LengthModel` or the lengths of a replayed
trace), tenants and difficulty, and returns arrays of :data:`ARRIVAL_DTYPE`. All sampling is
vectorised numpy driven by the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from statistics import NormalDist
from typing import Protocol

import numpy as np

from slo.files import TextFileError, read_text

ARRIVAL_DTYPE = np.dtype(
    [
        ("t_arrival", "f8"),
        ("prompt_tokens", "i4"),
        ("output_tokens", "i4"),
        ("tenant", "i2"),
        ("difficulty", "f4"),
    ]
)

LENGTHS_PATH = Path(__file__).resolve().parent / "params" / "lengths.json"


# ---------------------------------------------------------------------------------------------
# Lengths


#: Normal scores at which fitted marginals are tabulated.
Z_GRID = np.round(np.linspace(-4.0, 4.0, 161), 10)


class Marginal:
    """A token-length distribution of a known mean: lognormal of spread ``sigma`` (the standard
    deviation of the log length), or, given ``cdf`` (tokens -> share of lengths at or below, a
    histogram's), the quantiles of the CDF, the log length linear in the share within each of
    its buckets (lengths spread evenly on a log scale, as the buckets are), and lognormal of
    spread ``sigma`` beyond its first and last share when those are not 0 and 1. The tabulated
    quantiles are scaled to keep ``mean`` (the table clamps the tails at scores -4 and 4).
    """

    def __init__(self, mean: float, sigma: float, cdf: Mapping[float, float] | None = None):
        if not (mean >= 1 and sigma >= 0):
            raise ValueError(
                f"a length distribution needs mean >= 1 and sigma >= 0, got {mean}, {sigma}"
            )
        self.mean, self.sigma, self.cdf = float(mean), float(sigma), dict(cdf or {})

    def quantiles(self) -> np.ndarray:
        """Token counts at the normal scores :data:`Z_GRID`, of mean :attr:`mean`."""
        logs = self._log_quantiles()
        fine = np.linspace(-8.0, 8.0, 4001)  # the mean of the table sampled at N(0, 1) scores
        weights = np.exp(-0.5 * fine**2)
        tabulated = np.exp(logs)
        tabulated_mean = float(np.interp(fine, Z_GRID, tabulated) @ (weights / weights.sum()))
        return tabulated * (self.mean / tabulated_mean)

    def _log_quantiles(self) -> np.ndarray:
        lognormal = math.log(self.mean) - 0.5 * self.sigma**2 + self.sigma * Z_GRID
        if not any(0.0 < p < 1.0 for p in self.cdf.values()):
            return lognormal
        tokens = np.array(sorted(self.cdf))
        shares = np.maximum.accumulate([self.cdf[t] for t in tokens])
        # Log-uniform within each bucket (length distributions are skewed: a bucket's mass sits
        # near its lower bound), the lognormal's slope beyond the first and last share known.
        # A share held over several bounds: no length between them, so the next bucket starts
        # at the last (a share of 1 ends at the first: no length above it).
        unique, last = np.unique(shares[::-1], return_index=True)
        index = len(shares) - 1 - last
        if unique[-1] >= 1.0:
            index[-1] = int(np.argmax(shares >= 1.0))
        shares, tokens = unique, tokens[index]
        p = np.array([NormalDist().cdf(z) for z in Z_GRID])
        table = np.interp(p, shares, np.log(tokens))
        for end in (0, -1):
            if 0.0 < shares[end] < 1.0:
                z_end = NormalDist().inv_cdf(float(shares[end]))
                beyond = z_end > Z_GRID if end == 0 else z_end < Z_GRID
                slope = math.log(tokens[end]) + self.sigma * (Z_GRID - z_end)
                table = np.where(beyond, slope, table)
        return table


class LengthModel:
    """Joint prompt/output lengths as a Gaussian copula over two quantile tables.

    Parameters
    ----------
    z_grid: evenly spaced, increasing normal scores at which the quantiles are tabulated.
    prompt_quantiles, output_quantiles: token counts at ``Phi(z_grid)``.
    correlation: correlation of the normal scores of prompt and output length.
    """

    def __init__(
        self,
        z_grid: Sequence[float],
        prompt_quantiles: Sequence[float],
        output_quantiles: Sequence[float],
        correlation: float,
    ) -> None:
        self.z_grid = np.asarray(z_grid, dtype=np.float64)
        self.prompt_quantiles = np.asarray(prompt_quantiles, dtype=np.float64)
        self.output_quantiles = np.asarray(output_quantiles, dtype=np.float64)
        steps = np.diff(self.z_grid)
        if len(self.z_grid) < 2 or steps.min() <= 0 or not np.allclose(steps, steps[0]):
            raise ValueError("z_grid must be evenly spaced and increasing")
        if not self.prompt_quantiles.shape == self.z_grid.shape == self.output_quantiles.shape:
            raise ValueError("prompt_quantiles and output_quantiles must match z_grid")
        if not -1.0 <= correlation <= 1.0:
            raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
        self.correlation = float(correlation)
        self._z0, self._inv_dz = self.z_grid[0], 1.0 / steps[0]
        # float32 tables and per-cell slopes: sampling is one gather pair per token count.
        self._tables = {
            name: (q.astype(np.float32), np.diff(q, append=q[-1]).astype(np.float32))
            for name, q in (("prompt", self.prompt_quantiles), ("output", self.output_quantiles))
        }

    @classmethod
    def from_marginals(
        cls, prompt: Marginal, output: Marginal, correlation: float = 0.0
    ) -> LengthModel:
        """Prompt and output lengths of these marginal distributions (see :class:`Marginal`),
        joined by the correlation of their normal scores."""
        return cls(Z_GRID, prompt.quantiles(), output.quantiles(), correlation)

    @classmethod
    def from_params(cls, params: dict) -> LengthModel:
        """Build from one entry of ``lengths.json`` (written by ``scripts/fit_lengths.py``)."""
        return cls(
            params["z_grid"],
            params["prompt_quantiles"],
            params["output_quantiles"],
            params["normal_score_correlation"],
        )

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``n`` (prompt_tokens, output_tokens) pairs as two int32 arrays (each >= 1)."""
        z = rng.standard_normal((2, n), dtype=np.float32)
        rho = self.correlation
        z_out = rho * z[0] + math.sqrt(1.0 - rho * rho) * z[1]
        return self._quantile(z[0], "prompt"), self._quantile(z_out, "output")

    def _quantile(self, z: np.ndarray, which: str) -> np.ndarray:
        """Tokens at normal scores ``z``: linear interpolation in the evenly spaced table (a
        direct index instead of np.interp's binary search), clamped at its ends."""
        table, slope = self._tables[which]
        pos = (z - self._z0) * self._inv_dz
        np.minimum(np.maximum(pos, 0.0, out=pos), len(table) - 1, out=pos)  # ufuncs: no clip()
        i = pos.astype(np.intp)
        values = table[i] + (pos - i) * slope[i]
        return np.maximum(np.rint(values), 1).astype(np.int32)


def _load_length_models(path: Path = LENGTHS_PATH) -> dict[str, LengthModel]:
    # Missing only while scripts/fit_lengths.py bootstraps it.
    params = json.loads(path.read_text()) if path.is_file() else {}
    return {name: LengthModel.from_params(p) for name, p in params.items()}


#: Length models fitted to the Azure traces ("azure-conv", "azure-code").
LENGTH_MODELS: dict[str, LengthModel] = _load_length_models()


def get_length_model(name: str) -> LengthModel:
    """Return the length model called ``name``; ValueError lists the known ones."""
    try:
        return LENGTH_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(LENGTH_MODELS))
        raise ValueError(f"unknown length model {name!r}; known: {known}") from None


# ---------------------------------------------------------------------------------------------
# Rate modulation

#: The breakpoints of a modulation with none in an interval (shared: read-only).
_NO_TIMES = np.empty(0)
_NO_TIMES.flags.writeable = False


class Diurnal:
    """Sinusoidal daily pattern: rate x ``1 + amplitude * sin(2 pi t / period_s + phase)``.

    Parameters
    ----------
    period_s: period in simulated seconds.
    amplitude: relative swing in [0, 1].
    phase: phase in radians at t = 0.
    """

    def __init__(self, period_s: float = 86400.0, amplitude: float = 0.5, phase: float = 0.0):
        if period_s <= 0:
            raise ValueError(f"Diurnal period_s must be > 0, got {period_s}")
        if not 0.0 <= amplitude <= 1.0:
            raise ValueError(f"Diurnal amplitude must be in [0, 1], got {amplitude}")
        self.period_s, self.amplitude, self.phase = period_s, amplitude, phase
        self.resolution_s = period_s / 512  # grid step that keeps the warp accurate to ~1e-5

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Rate multiplier at times ``t``."""
        return 1.0 + self.amplitude * np.sin(2.0 * np.pi * t / self.period_s + self.phase)

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the multiplier jumps (none)."""
        del t0, t1
        return _NO_TIMES


class FlashCrowd:
    """A burst: rate x ``multiplier`` during ``[start_s, start_s + duration_s)``.

    Parameters
    ----------
    start_s, duration_s: the window in simulated seconds.
    multiplier: rate factor inside the window (> 0).
    """

    resolution_s = math.inf

    def __init__(self, start_s: float, duration_s: float, multiplier: float = 5.0):
        if duration_s <= 0 or multiplier <= 0:
            raise ValueError(
                f"FlashCrowd duration_s and multiplier must be > 0, got {duration_s}, {multiplier}"
            )
        self.start_s, self.duration_s, self.multiplier_value = start_s, duration_s, multiplier

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Rate multiplier at times ``t``."""
        inside = (t >= self.start_s) & (t < self.start_s + self.duration_s)
        return np.where(inside, self.multiplier_value, 1.0)

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the multiplier jumps."""
        edges = np.array([self.start_s, self.start_s + self.duration_s])
        return edges[(edges > t0) & (edges < t1)]


class RateCurve:
    """A measured rate curve: rate x ``multipliers[k]`` during the ``k``-th block of ``step_s``
    seconds from ``start_s``, the blocks repeating after the last one (and before the first).

    The multipliers are the given rates over their mean, so the process's rate is the curve's
    mean and ``rate_scale`` (or a workload's ``rate``/``load``) rescales its shape. The curve
    *repeats* rather than holding its last value: the long-run rate then stays the process's
    rate whatever the run's length (a held last block would make a fleet's ``load`` mean that
    block's load on long runs), and a curve fitted over a day replays as a daily cycle. Blocks
    are piecewise constant, not interpolated: a block's rate is what its counters counted, and
    the warp integrates a constant block exactly.

    Parameters
    ----------
    step_s: length of a block in simulated seconds (> 0).
    rates: the rate in each block (>= 0, finite, at least two, not all 0), in any unit.
    start_s: simulated time where the first block starts.
    """

    # Constant between its block edges, which it gives as breakpoints: no grid needed.
    resolution_s = math.inf

    def __init__(self, step_s: float, rates: Sequence[float], start_s: float = 0.0) -> None:
        values = np.asarray(rates, dtype=np.float64)
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"RateCurve step_s must be finite and > 0, got {step_s}")
        if values.ndim != 1 or len(values) < 2:
            raise ValueError(f"RateCurve needs at least two rates, got {rates!r}")
        if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
            raise ValueError(f"RateCurve rates must be finite, >= 0 and not all 0, got {rates!r}")
        if not math.isfinite(start_s):
            raise ValueError(f"RateCurve start_s must be finite, got {start_s}")
        self.step_s, self.start_s = float(step_s), float(start_s)
        self.multipliers = values / values.mean()
        self.span_s = self.step_s * len(values)

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Rate multiplier at times ``t``."""
        block = ((np.asarray(t) - self.start_s) // self.step_s).astype(np.int64)
        return self.multipliers[block % len(self.multipliers)]

    def block_at(self, t: float) -> int:
        """The block (index into :attr:`multipliers`) of time ``t``."""
        return int((t - self.start_s) // self.step_s) % len(self.multipliers)

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Block edges in ``(t0, t1)``."""
        first = math.floor((t0 - self.start_s) / self.step_s) + 1
        last = math.ceil((t1 - self.start_s) / self.step_s)
        if first >= last:  # the usual case: a simulator tick is far shorter than a block
            return _NO_TIMES
        edges = self.start_s + self.step_s * np.arange(first, last, dtype=np.float64)
        return edges[(edges > t0) & (edges < t1)]


class RateModulation(Protocol):
    """A factor on an arrival process's rate over simulated time (:class:`Diurnal`,
    :class:`FlashCrowd`, :class:`RateCurve`).

    ``resolution_s`` is the grid step that integrates the multiplier accurately between its
    breakpoints (``math.inf``: constant or linear between them).
    """

    resolution_s: float

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Rate multiplier at times ``t``."""
        ...

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the multiplier (or its slope) jumps."""
        ...


# ---------------------------------------------------------------------------------------------
# Arrival processes


class ArrivalProcess:
    """Base of all arrival processes: nominal-time generation plus the time warp.

    Parameters
    ----------
    modulations: rate modulations applied on top of the process (multiplied together).

    Attributes
    ----------
    rate_scale: factor on the rate, applied from the next call on (the environment's load knob).
    """

    def __init__(self, modulations: Sequence[RateModulation] = ()) -> None:
        self.modulations = list(modulations)
        self.rate_scale = 1.0
        self._u = 0.0  # nominal time reached by the previous call

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per nominal second (before modulation and ``rate_scale``)."""
        raise NotImplementedError

    def arrivals(self, rng: np.random.Generator, t0: float, t1: float) -> np.ndarray:
        """Return the sorted arrival times in ``[t0, t1)``, continuing the previous call.

        Calls are expected to tile time (``t0`` = previous ``t1``); a gap between calls is
        skipped, as if the source had been paused.
        """
        times, _ = self._warped(rng, t0, t1)
        return times

    def _warped(
        self, rng: np.random.Generator, t0: float, t1: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if t1 < t0:
            raise ValueError(f"arrival interval ends before it starts: [{t0}, {t1})")
        t_grid, u_grid = self._warp_grid(t0, t1)
        nominal, rows = self._nominal(rng, u_grid[0], u_grid[-1])
        self._u = u_grid[-1]
        times = np.interp(nominal, u_grid, t_grid)
        # Rounding must not push an arrival onto t1, which belongs to the next interval.
        np.minimum(times, np.nextafter(t1, -np.inf), out=times)
        return times, rows

    def _warp_grid(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Simulated-time grid over [t0, t1] and the nominal time reached at each point."""
        if not self.modulations or t1 == t0:
            return np.array([t0, t1]), self._u + self.rate_scale * np.array([0.0, t1 - t0])
        resolution = min(m.resolution_s for m in self.modulations)
        steps = 1 if math.isinf(resolution) else max(1, math.ceil((t1 - t0) / resolution))
        cuts = [m.breakpoints(t0, t1) for m in self.modulations]
        t_grid = np.unique(np.concatenate([np.linspace(t0, t1, steps + 1), *cuts]))
        mid = 0.5 * (t_grid[1:] + t_grid[:-1])
        mult = np.ones_like(mid)
        for m in self.modulations:
            mult *= m.multiplier(mid)
        du = self.rate_scale * mult * np.diff(t_grid)
        return t_grid, self._u + np.concatenate([[0.0], np.cumsum(du)])

    def _nominal(
        self, rng: np.random.Generator, u0: float, u1: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Sorted nominal arrival times in [u0, u1) (and trace rows for replays)."""
        raise NotImplementedError


class GammaBursty(ArrivalProcess):
    """Renewal process with Gamma inter-arrival gaps: mean ``1/rate``, coefficient of variation
    ``cv`` (cv > 1: bursty; cv = 1: Poisson; cv < 1: regular).

    Parameters
    ----------
    rate: arrivals per second; cv: coefficient of variation of the gaps.
    modulations: see :class:`ArrivalProcess`.
    """

    def __init__(
        self, rate: float, cv: float = 4.0, modulations: Sequence[RateModulation] = ()
    ) -> None:
        super().__init__(modulations)
        if rate <= 0 or cv <= 0:
            raise ValueError(f"{type(self).__name__} rate and cv must be > 0, got {rate}, {cv}")
        self.rate, self.cv = rate, cv
        self._shape = 1.0 / (cv * cv)
        self._next: float | None = None  # nominal time of the next arrival, once drawn

    @property
    def mean_rate(self) -> float:
        """Arrivals per nominal second."""
        return self.rate

    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.gamma(self._shape, 1.0 / (self._shape * self.rate), n)

    def _first_gap(self, rng: np.random.Generator) -> float:
        # A stationary renewal process starts mid-gap: the gap covering t0 is length-biased
        # (Gamma(k+1) for Gamma(k) gaps) and t0 falls uniformly inside it.
        biased = rng.gamma(self._shape + 1.0, 1.0 / (self._shape * self.rate))
        return float(rng.uniform() * biased)

    def _nominal(self, rng, u0, u1):
        if self._next is None:
            self._next = u0 + self._first_gap(rng)
        chunks = []
        start = self._next
        while start < u1:
            # Enough gaps to pass u1 most of the time; the loop draws more if not.
            expected = (u1 - start) * self.rate
            n = int(expected + 4.0 * math.sqrt(expected) / min(self._shape, 1.0) ** 0.5) + 16
            times = start + np.cumsum(np.concatenate(([0.0], self._gaps(rng, n))))
            k = int(np.searchsorted(times, u1))
            if k == len(times):  # all drawn times are before u1: the last one stays pending
                k -= 1
            chunks.append(times[:k])
            start = float(times[k])
        self._next = start
        return (np.concatenate(chunks) if chunks else np.empty(0)), None


class Poisson(GammaBursty):
    """Poisson arrivals at ``rate`` per second (exponential gaps).

    Parameters
    ----------
    rate: arrivals per second; modulations: see :class:`ArrivalProcess`.
    """

    def __init__(self, rate: float, modulations: Sequence[RateModulation] = ()) -> None:
        super().__init__(rate, 1.0, modulations)

    def _gaps(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(1.0 / self.rate, n)


class MMPP(ArrivalProcess):
    """Markov-modulated Poisson process: a hidden state with its own Poisson rate, left after an
    exponential dwell for a uniformly chosen other state.

    Parameters
    ----------
    rates: arrivals per second in each state (at least two states).
    mean_dwell_s: mean time in a state, one value or one per state.
    modulations: see :class:`ArrivalProcess`.
    """

    def __init__(
        self,
        rates: Sequence[float],
        mean_dwell_s: float | Sequence[float] = 60.0,
        modulations: Sequence[RateModulation] = (),
    ) -> None:
        super().__init__(modulations)
        self.rates = np.asarray(rates, dtype=np.float64)
        self.mean_dwell_s = np.broadcast_to(
            np.asarray(mean_dwell_s, dtype=np.float64), self.rates.shape
        ).copy()
        if len(self.rates) < 2 or (self.rates < 0).any() or (self.mean_dwell_s <= 0).any():
            raise ValueError(
                "MMPP needs >= 2 states, rates >= 0 and mean_dwell_s > 0, got "
                f"rates={self.rates.tolist()}, mean_dwell_s={self.mean_dwell_s.tolist()}"
            )
        self._state: int | None = None
        self._dwell_left = 0.0

    @property
    def mean_rate(self) -> float:
        """Long-run arrivals per nominal second (states weighted by their mean dwell)."""
        return float((self.rates * self.mean_dwell_s).sum() / self.mean_dwell_s.sum())

    def _nominal(self, rng, u0, u1):
        if self._state is None:  # stationary start: a state with probability ~ its dwell
            weights = self.mean_dwell_s / self.mean_dwell_s.sum()
            self._state = int(rng.choice(len(self.rates), p=weights))
            self._dwell_left = rng.exponential(self.mean_dwell_s[self._state])
        chunks, u = [], u0
        while u < u1:
            span = min(self._dwell_left, u1 - u)
            count = rng.poisson(self.rates[self._state] * span)
            chunks.append(np.sort(rng.uniform(u, u + span, count)))
            u += span
            self._dwell_left -= span
            if self._dwell_left <= 0.0:
                others = len(self.rates) - 1
                self._state = (self._state + 1 + int(rng.integers(others))) % len(self.rates)
                self._dwell_left = rng.exponential(self.mean_dwell_s[self._state])
        return (np.concatenate(chunks) if chunks else np.empty(0)), None


# ---------------------------------------------------------------------------------------------
# Trace replay

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def _trace_error(path: Path, row: int, column: str, problem: str) -> ValueError:
    # Data rows count from 1; the header is line 1 of the file.
    return ValueError(f"{path}: row {row} (line {row + 1}), column {column!r}: {problem}")


def _parse_times(path: Path, raw: list[str], column: str) -> np.ndarray:
    """Seconds since the first row, from numbers (seconds) or ISO-like date-times."""
    try:
        return np.array(raw, dtype=np.float64) - float(raw[0])
    except ValueError:
        pass
    try:
        stamps = np.array(raw).astype("datetime64[ns]").astype(np.int64)
    except ValueError:
        for i, text in enumerate(raw, start=1):
            try:
                np.datetime64(text.strip(), "ns")
            except ValueError:
                raise _trace_error(
                    path, i, column, f"not a time: {text!r} (seconds or date-time)"
                ) from None
        raise
    return (stamps - stamps[0]) / 1e9


def _parse_tokens(path: Path, raw: list[str], column: str) -> np.ndarray:
    try:
        values = np.array(raw, dtype=np.int64)
    except ValueError:
        values = None
    if values is None or (values < 0).any():
        for i, text in enumerate(raw, start=1):
            try:
                value = int(text)
            except ValueError:
                raise _trace_error(path, i, column, f"not an integer: {text!r}") from None
            if value < 0:
                raise _trace_error(path, i, column, f"negative token count {value}")
    return values.astype(np.int32)


@cache
def _read_trace(
    path: Path, mtime_ns: int, names: tuple[str, str, str] = TRACE_COLUMNS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and validate a trace file whose columns ``names`` hold the timestamp, prompt and
    output tokens (cached per path, modification time and columns)."""
    del mtime_ns  # part of the cache key only
    try:
        text = read_text(path)
    except TextFileError as exc:
        raise ValueError(f"{exc} (expected a CSV trace)") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        missing = [c for c in names if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r} (header: {header})")
        idx = [header.index(c) for c in names]
        columns: tuple[list[str], ...] = ([], [], [])
        for row, record in enumerate(reader, start=1):
            if not record:
                continue
            for col, (name, i) in enumerate(zip(names, idx, strict=True)):
                if i >= len(record) or not record[i].strip():
                    raise _trace_error(path, row, name, "missing value")
                columns[col].append(record[i])
    if not columns[0]:
        raise ValueError(f"{path}: no requests (only a header)")
    times = _parse_times(path, columns[0], names[0])
    backwards = np.flatnonzero(np.diff(times) < 0)
    if len(backwards):
        row = int(backwards[0]) + 2
        raise _trace_error(path, row, names[0], "time earlier than the previous row's")
    prompt = _parse_tokens(path, columns[1], names[1])
    output = _parse_tokens(path, columns[2], names[2])
    for a in (times, prompt, output):
        a.flags.writeable = False
    return times, prompt, output


class TraceReplay(ArrivalProcess):
    """Replay of a request trace, by default in Azure LLM inference format
    (``TIMESTAMP, ContextTokens, GeneratedTokens``).

    Parameters
    ----------
    path: CSV file; the timestamp is a date-time or seconds, rows sorted by time.
    time_scale: factor on the trace's time axis (0.5 = twice the rate).
    loop: start over after the last request (the cycle lasts the trace span plus one mean gap).
    modulations: see :class:`ArrivalProcess`.
    columns: names of the timestamp, prompt-token and output-token columns.
    start: where in the cycle the replay starts, as a fraction of it (0: the first request).
    """

    def __init__(
        self,
        path: str | Path,
        time_scale: float = 1.0,
        loop: bool = True,
        modulations: Sequence[RateModulation] = (),
        columns: tuple[str, str, str] = TRACE_COLUMNS,
        start: float = 0.0,
    ) -> None:
        super().__init__(modulations)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"trace file not found: {path}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"start must be in [0, 1) (a fraction of the trace), got {start}")
        times, self.prompt_tokens, self.output_tokens = _read_trace(
            path.resolve(), path.stat().st_mtime_ns, tuple(columns)
        )
        self.path, self.loop = path, loop
        self.times = times * time_scale
        n = len(self.times)
        mean_gap = self.times[-1] / (n - 1) if n > 1 and self.times[-1] > 0 else time_scale
        self.cycle_s = float(self.times[-1] + mean_gap)
        self._u = start * self.cycle_s

    @property
    def mean_rate(self) -> float:
        """Requests per nominal second over one cycle."""
        return len(self.times) / self.cycle_s

    def replay(
        self, rng: np.random.Generator, t0: float, t1: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (times, prompt_tokens, output_tokens) of the trace requests in [t0, t1)."""
        times, rows = self._warped(rng, t0, t1)
        return times, self.prompt_tokens[rows], self.output_tokens[rows]

    def _nominal(self, rng, u0, u1):
        del rng  # a replay is deterministic
        cycles = range(int(u0 // self.cycle_s), int(u1 // self.cycle_s) + 1)
        if not self.loop:
            cycles = range(0, 1 if u0 < self.cycle_s else 0)
        times, rows = [], []
        for k in cycles:
            offset = k * self.cycle_s
            lo, hi = np.searchsorted(self.times, [u0 - offset, u1 - offset])
            times.append(offset + self.times[lo:hi])
            rows.append(np.arange(lo, hi))
        if not times:
            return np.empty(0), np.empty(0, dtype=np.intp)
        return np.concatenate(times), np.concatenate(rows)


# ---------------------------------------------------------------------------------------------
# Workloads


class Workload:
    """An arrival process with lengths, tenants and difficulty.

    Parameters
    ----------
    process: when requests arrive.
    lengths: prompt/output length model; None takes the lengths of a :class:`TraceReplay`.
    tenant_shares: share of requests of each tenant id 0, 1, ... (normalised).
    difficulty: Beta (a, b) of how much a request needs the strong tier, in [0, 1].
    tenant_curves: a :class:`RateCurve` (or None: steady) per tenant, when some tenant's
        traffic has its own curve. A request arriving at ``t`` is then tenant ``i``'s with
        probability ``share_i m_i(t) / sum_j share_j m_j(t)`` (``m`` the curve's multiplier,
        1 without one): the process's rate is the whole traffic's, and each tenant's part of it
        follows its curve (thinning a Poisson process keeps every part Poisson). Where every
        tenant's curve is silent at once, the plain shares hold.
    """

    def __init__(
        self,
        process: ArrivalProcess,
        lengths: LengthModel | None = None,
        tenant_shares: Sequence[float] = (1.0,),
        difficulty: tuple[float, float] = (2.0, 2.0),
        tenant_curves: Sequence[RateCurve | None] = (),
    ) -> None:
        if lengths is None and not isinstance(process, TraceReplay):
            raise ValueError("lengths=None needs a TraceReplay process (its lengths are used)")
        shares = np.asarray(tenant_shares, dtype=np.float64)
        if shares.ndim != 1 or len(shares) == 0 or (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f"tenant_shares must be non-negative and not all 0, got {shares}")
        if min(difficulty) <= 0:
            raise ValueError(f"difficulty Beta parameters must be > 0, got {difficulty}")
        self.process, self.lengths = process, lengths
        self.tenant_shares = shares / shares.sum()
        self._tenant_edges = np.cumsum(self.tenant_shares)[:-1]
        self.difficulty = difficulty
        self._tenant_mix = _TenantMix.of(self.tenant_shares, tenant_curves)

    @property
    def rate_scale(self) -> float:
        """Factor on the arrival rate (applies from the next :meth:`generate`)."""
        return self.process.rate_scale

    @rate_scale.setter
    def rate_scale(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"rate_scale must be >= 0, got {value}")
        self.process.rate_scale = value

    @property
    def mean_rate(self) -> float:
        """Long-run requests per second at ``rate_scale`` 1 without modulation."""
        return self.process.mean_rate

    def generate(self, rng: np.random.Generator, t0: float, t1: float) -> np.ndarray:
        """Return the requests arriving in ``[t0, t1)``, sorted by time (ARRIVAL_DTYPE)."""
        if self.lengths is None:
            times, prompt, output = self.process.replay(rng, t0, t1)
        else:
            times = self.process.arrivals(rng, t0, t1)
            prompt, output = self.lengths.sample(rng, len(times))
        out = np.empty(len(times), dtype=ARRIVAL_DTYPE)
        out["t_arrival"] = times
        out["prompt_tokens"] = prompt
        out["output_tokens"] = output
        # Inverse-CDF draw of the tenant: rng.choice(p=...) has a large per-call overhead.
        draws = rng.random(len(times))
        if self._tenant_mix is None:
            out["tenant"] = np.searchsorted(self._tenant_edges, draws, side="right")
        else:
            out["tenant"] = self._tenant_mix.tenants(times, draws, t0, t1)
        out["difficulty"] = rng.beta(*self.difficulty, len(times))
        return out


class _TenantMix:
    """The tenants' shares over time when some tenants have their own rate curve (see
    :class:`Workload`): constant between the curves' block edges, so a call draws with one set
    of cumulative shares per stretch between edges. A call is usually far shorter than a block:
    one stretch, whose shares the previous call most often had already (kept)."""

    def __init__(self, shares: np.ndarray, curves: Sequence[RateCurve | None]) -> None:
        self.shares = shares
        self.curved = [(i, c) for i, c in enumerate(curves) if c is not None]
        self._blocks: tuple[int, ...] | None = None  # the curves' blocks of the kept edges
        self._edges = np.empty(0)

    @classmethod
    def of(cls, shares: np.ndarray, curves: Sequence[RateCurve | None]) -> _TenantMix | None:
        """The mix of tenants with these shares and curves; None when no tenant has a curve
        (the plain shares: the same draws as before curves existed)."""
        if len(curves) not in (0, len(shares)):
            raise ValueError(f"tenant_curves has {len(curves)} entries for {len(shares)} tenants")
        return cls(shares, curves) if any(c is not None for c in curves) else None

    def tenants(self, times: np.ndarray, draws: np.ndarray, t0: float, t1: float) -> np.ndarray:
        """The tenant of each arrival at ``times`` in ``[t0, t1)`` from its uniform draw."""
        cuts = [c.breakpoints(t0, t1) for _, c in self.curved]
        if not any(len(c) for c in cuts):  # the usual case: one stretch
            return np.searchsorted(self._edges_at(0.5 * (t0 + t1)), draws, side="right")
        edges = np.unique(np.concatenate(cuts))
        starts, ends = np.concatenate([[t0], edges]), np.concatenate([edges, [t1]])
        bounds = np.concatenate([[0], np.searchsorted(times, edges), [len(times)]])
        tenant = np.empty(len(times), dtype=np.intp)
        for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            # At a stretch's middle: clear of the rounding of the edges' times.
            shares = self._edges_at(0.5 * (starts[k] + ends[k]))
            tenant[lo:hi] = np.searchsorted(shares, draws[lo:hi], side="right")
        return tenant

    def _edges_at(self, t: float) -> np.ndarray:
        """The cumulative shares of the tenants at time ``t`` (inverse-CDF edges)."""
        blocks = tuple(c.block_at(t) for _, c in self.curved)
        if blocks != self._blocks:
            weights = self.shares.copy()
            for (i, curve), block in zip(self.curved, blocks, strict=True):
                weights[i] *= curve.multipliers[block]
            if weights.sum() <= 0:  # every tenant's curve silent at once
                weights = self.shares
            self._blocks, self._edges = blocks, np.cumsum(weights)[:-1] / weights.sum()
        return self._edges


class MixedWorkload:
    """Several workloads, each owned by one tenant, merged into one stream.

    Parameters
    ----------
    components: (tenant id, workload) pairs; each workload's requests get that tenant id.
    """

    def __init__(self, components: Sequence[tuple[int, Workload]]) -> None:
        if not components:
            raise ValueError("MixedWorkload needs at least one (tenant, workload) component")
        self.components = list(components)

    @property
    def rate_scale(self) -> float:
        """Factor on every component's rate (the first component's value is reported)."""
        return self.components[0][1].rate_scale

    @rate_scale.setter
    def rate_scale(self, value: float) -> None:
        for _, workload in self.components:
            workload.rate_scale = value

    @property
    def mean_rate(self) -> float:
        """Sum of the components' long-run rates."""
        return sum(w.mean_rate for _, w in self.components)

    def generate(self, rng: np.random.Generator, t0: float, t1: float) -> np.ndarray:
        """Return all components' requests in ``[t0, t1)``, sorted by time."""
        parts = []
        for tenant, workload in self.components:
            part = workload.generate(rng, t0, t1)
            part["tenant"] = tenant
            parts.append(part)
        merged = np.concatenate(parts)
        return merged[np.argsort(merged["t_arrival"], kind="stable")]


# ---------------------------------------------------------------------------------------------
# Factory

#: Workload names accepted by :func:`make_workload`.
WORKLOAD_NAMES = ("poisson", "bursty", "mmpp", "diurnal", "flash-crowd", "azure-conv",
                  "azure-code", "trace")  # fmt: skip
AZURE_TRACES = {
    "azure-conv": "traces/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "traces/AzureLLMInferenceTrace_code.csv",
}


def make_workload(
    name: str,
    rate: float | None = None,
    *,
    lengths: str | LengthModel = "azure-conv",
    trace: str | Path | None = None,
    trace_columns: tuple[str, str, str] = TRACE_COLUMNS,
    trace_time_scale: float = 1.0,
    trace_start: float = 0.0,
    tenants: int = 1,
    tenant_shares: Sequence[float] | None = None,
    difficulty: tuple[float, float] = (2.0, 2.0),
    cv: float = 4.0,
    mmpp_rate_ratio: float = 4.0,
    mean_dwell_s: float = 60.0,
    period_s: float = 3600.0,
    amplitude: float = 0.5,
    flash_start_s: float = 300.0,
    flash_duration_s: float = 60.0,
    flash_multiplier: float = 5.0,
    rate_curve: RateCurve | None = None,
    tenant_curves: Sequence[RateCurve | None] = (),
) -> Workload:
    """Build a named workload.

    Parameters
    ----------
    name: one of :data:`WORKLOAD_NAMES`. ``poisson``; ``bursty`` (Gamma gaps of CV ``cv``);
        ``mmpp`` (two states whose rates differ by ``mmpp_rate_ratio``, mean ``rate``);
        ``diurnal`` and ``flash-crowd`` (Poisson with that modulation); ``azure-conv``,
        ``azure-code`` (replay of the real traces, lengths included, time rescaled to ``rate``
        if given); ``trace`` (replay of the file ``trace``, whose ``trace_columns`` hold the
        timestamp, prompt and output tokens and whose times are multiplied by
        ``trace_time_scale`` before the rescaling to ``rate``; the replay starts at the
        fraction ``trace_start`` of it).
    rate: mean requests per second (required for the synthetic ones).
    lengths: length model of the synthetic workloads (a name of :data:`LENGTH_MODELS` or one).
    tenants, tenant_shares: number of tenants and their shares (default equal).
    difficulty: Beta parameters of request difficulty.
    rate_curve: a measured rate curve on top of a synthetic workload (its mean is ``rate``);
        replays have their own curve and refuse one.
    tenant_curves: a rate curve (or None) per tenant: its part of the traffic follows it (see
        :class:`Workload`); synthetic workloads only, as ``rate_curve``.
    The remaining parameters tune the named process as described above.
    """
    if tenant_shares is None:
        shares = [1.0] * tenants
    elif tenants in (1, len(tenant_shares)):
        shares = tenant_shares
    else:
        raise ValueError(f"tenant_shares has {len(tenant_shares)} entries for tenants={tenants}")
    common = {"tenant_shares": shares, "difficulty": difficulty}
    if name in AZURE_TRACES or name == "trace":
        if name == "trace" and trace is None:
            raise ValueError("workload 'trace' needs trace=PATH")
        if rate_curve is not None:
            raise ValueError(f"workload {name!r} replays a trace's own rate: no rate_curve")
        if any(c is not None for c in tenant_curves):
            raise ValueError(f"workload {name!r} replays a trace's own rate: no tenant_curves")
        if name in AZURE_TRACES:
            from envs.paths import require_reference_file

            trace, trace_columns = require_reference_file(AZURE_TRACES[name]), TRACE_COLUMNS
        native = TraceReplay(trace, time_scale=trace_time_scale, columns=trace_columns)
        scale = trace_time_scale * (1.0 if rate is None else native.mean_rate / rate)
        replay = TraceReplay(trace, time_scale=scale, columns=trace_columns, start=trace_start)
        return Workload(replay, None, **common)
    if name not in WORKLOAD_NAMES:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOAD_NAMES)}")
    if rate is None or rate <= 0:
        raise ValueError(f"workload {name!r} needs rate > 0, got {rate}")
    processes = {
        "poisson": lambda: Poisson(rate),
        "bursty": lambda: GammaBursty(rate, cv),
        "mmpp": lambda: MMPP(
            [2 * rate / (1 + mmpp_rate_ratio), 2 * rate * mmpp_rate_ratio / (1 + mmpp_rate_ratio)],
            mean_dwell_s,
        ),
        "diurnal": lambda: Poisson(rate, [Diurnal(period_s, amplitude)]),
        "flash-crowd": lambda: Poisson(
            rate, [FlashCrowd(flash_start_s, flash_duration_s, flash_multiplier)]
        ),
    }
    length_model = get_length_model(lengths) if isinstance(lengths, str) else lengths
    process = processes[name]()
    if rate_curve is not None:
        process.modulations.append(rate_curve)
    return Workload(process, length_model, **common, tenant_curves=tenant_curves)
