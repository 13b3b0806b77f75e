"""A ring buffer of cumulative counts per time bucket: any window sum is two reads.

Bucket ``b`` covers the half-open interval ``(b * resolution, (b + 1) * resolution]``, so an
event at time ``t`` lands in bucket ``ceil(t / resolution) - 1`` and, at a bucket-aligned time
``now``, the last ``W`` buckets are exactly the window ``(now - W * resolution, now]``.
"""

from __future__ import annotations

import numpy as np


def bucket_of(t: float | np.ndarray, resolution: float) -> int | np.ndarray:
    """The bucket holding time ``t`` (scalar or array)."""
    if isinstance(t, np.ndarray):
        return np.ceil(t / resolution).astype(np.int64) - 1
    return int(np.ceil(t / resolution)) - 1


class CumulativeRing:
    """Cumulative counts of ``n_series`` series per bucket, kept for ``n_buckets`` buckets.

    ``cum[b % n_buckets, s]`` holds the count of series ``s`` in all buckets up to and including
    ``b``, for the last ``n_buckets`` buckets up to :attr:`head`; buckets before the first one
    written read as zero.

    Parameters
    ----------
    n_series:
        Number of counted series (e.g. good and total per SLO).
    n_buckets:
        Ring length: windows of up to ``n_buckets - 1`` buckets can be summed.
    head:
        The bucket the ring starts at.
    """

    def __init__(self, n_series: int, n_buckets: int, head: int) -> None:
        self.cum = np.zeros((n_buckets, n_series))
        self.head = head

    @property
    def n_buckets(self) -> int:
        """The ring length."""
        return self.cum.shape[0]

    @property
    def latest(self) -> np.ndarray:
        """The cumulative counts through :attr:`head` (all counts ever added)."""
        return self.cum[self.head % self.n_buckets]

    def advance(self, bucket: int) -> None:
        """Move the head forward to ``bucket``; the new buckets start empty."""
        if bucket <= self.head:
            return
        steps = min(bucket - self.head, self.n_buckets)
        latest = self.latest.copy()  # the head slot itself is overwritten after a full lap
        for slots, _ in self._slices(bucket - steps + 1, steps):
            self.cum[slots] = latest
        self.head = bucket

    def add(self, first_bucket: int, counts: np.ndarray) -> None:
        """Add ``counts[i]`` (shape ``(n, n_series)``) to bucket ``first_bucket + i``.

        Buckets must not lie after the head. Counts older than the ring are merged into its
        oldest bucket: they stay in every total but leave the windows early.
        """
        last_bucket = first_bucket + len(counts) - 1
        if last_bucket > self.head:
            raise ValueError(f"bucket {last_bucket} is after the ring head {self.head}")
        oldest = self.head - self.n_buckets + 1
        if first_bucket < oldest:
            merged = min(oldest - first_bucket + 1, len(counts))
            counts = np.vstack([counts[:merged].sum(axis=0, keepdims=True), counts[merged:]])
            first_bucket = oldest
        increments = np.cumsum(counts, axis=0)
        for slots, rows in self._slices(first_bucket, len(increments)):
            self.cum[slots] += increments[rows]
        # Later buckets up to the head hold cumulative counts, so they grow by the total.
        after = first_bucket + len(increments)
        for slots, _ in self._slices(after, self.head - after + 1):
            self.cum[slots] += increments[-1]

    def _slices(self, first_bucket: int, n: int) -> list[tuple[slice, slice]]:
        """The ``n`` buckets from ``first_bucket`` as at most two ``(ring slots, offsets)``
        slice pairs (the ring wraps once at most); basic slicing is cheaper than fancy
        indexing for the few buckets of one environment step."""
        if n <= 0:
            return []
        start = first_bucket % self.n_buckets
        split = min(n, self.n_buckets - start)
        pairs = [(slice(start, start + split), slice(0, split))]
        if split < n:
            pairs.append((slice(0, n - split), slice(split, n)))
        return pairs

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """The ring's state (arrays are copies)."""
        return {"cum": self.cum.copy(), "head": int(self.head)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict` (same shape required)."""
        cum = np.asarray(state["cum"], dtype=np.float64)
        if cum.shape != self.cum.shape:
            raise ValueError(f"ring state has shape {cum.shape}, expected {self.cum.shape}")
        self.cum[...] = cum
        self.head = int(state["head"])
