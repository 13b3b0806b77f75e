"""Counter histories of a fleet's engines, read from Prometheus or from saved scrapes.

``budgetpilot fit`` reads what a fleet's engines counted over an interval from either source,
through one interface (:class:`MetricsSource`):

* :class:`PrometheusSource`: a Prometheus server's HTTP API, one ``query_range`` per metric name
  over ``[start, end]`` at ``step`` (the raw series, with their target labels);
* :class:`ScrapesSource`: a directory of saved scrapes, one file per scrape of the whole fleet
  named by its Unix time (``1765000000.prom``, fractions allowed), holding Prometheus
  exposition text whose series carry their target labels (``replica``, ``pool``...), as
  Prometheus's ``/federate`` endpoint returns them.

Counters are read as Prometheus's ``increase()`` reads them: a drop is a restart from zero.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from slo.files import TextFileError, read_text
from slo.history import escape_label_value
from slo.prometheus_http import api_request, error_message


class SourceError(ValueError):
    """A metrics source that cannot be read: unreachable, refusing the query, or malformed."""


@dataclass(frozen=True)
class Series:
    """One time series: its labels (without ``__name__``) and its samples in time order."""

    labels: Mapping[str, str]
    times: np.ndarray
    values: np.ndarray

    def increases(self) -> np.ndarray:
        """The counter's increase over each interval between two samples (a drop is a restart
        from zero, as ``increase()`` reads it)."""
        steps = np.diff(self.values)
        return np.where(steps >= 0, steps, self.values[1:])

    def increase(self) -> float:
        """The counter's increase from its first sample to its last."""
        return float(self.increases().sum())


class MetricsSource(Protocol):
    """Where counter histories come from."""

    start: float
    end: float

    def series(self, name: str) -> list[Series]:
        """Every series of the sample name ``name`` with samples in ``[start, end]``."""
        ...

    def describe(self) -> str:
        """The source in words, for reports and errors."""
        ...


class PrometheusSource:
    """A Prometheus server's HTTP API over ``[start, end]`` (Unix seconds) at ``step_s``.

    Raises
    ------
    SourceError
        On an empty or inverted range (at construction); when the server cannot be reached,
        answers an HTTP error or a failed query (naming the URL, the query and Prometheus's
        message).
    """

    def __init__(
        self, url: str, start: float, end: float, step_s: float = 15.0, timeout_s: float = 30.0
    ) -> None:
        if not (math.isfinite(start) and math.isfinite(end) and end > start):
            raise SourceError(f"empty range: --end ({end}) must come after --start ({start})")
        if not step_s > 0:
            raise SourceError(f"step must be > 0 s, got {step_s}")
        self.url, self.start, self.end = url.rstrip("/"), start, end
        self.step_s, self.timeout_s = step_s, timeout_s

    def describe(self) -> str:
        return f"Prometheus {self.url} (step {self.step_s:g} s)"

    def series(self, name: str) -> list[Series]:
        params = {"query": name, "start": self.start, "end": self.end, "step": self.step_s}
        data = self._request("/api/v1/query_range", params, name)
        return [
            Series(
                {k: v for k, v in item["metric"].items() if k != "__name__"},
                np.array([float(t) for t, _ in item["values"]]),
                np.array([float(v) for _, v in item["values"]]),
            )
            for item in data["result"]
        ]

    def _request(self, path: str, params: Mapping[str, object], query: str) -> dict:
        try:
            with api_request(self.url, path, params, self.timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            raise SourceError(
                f"{self.url}: query {query!r} answered HTTP {err.code}: {error_message(err)}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SourceError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        except json.JSONDecodeError:
            raise SourceError(f"{self.url}: query {query!r} answered something not JSON") from None
        if body.get("status") != "success":
            raise SourceError(f"{self.url}: query {query!r} failed: {body.get('error')}")
        return body["data"]


class ScrapesSource:
    """A directory of saved scrapes (see the module docstring), optionally within a range.

    Raises
    ------
    SourceError
        When the directory holds no scrape, a file's name is not a Unix time, a file is not
        exposition text (naming it), or no scrape falls in the range.
    """

    SUFFIXES = (".prom", ".txt")

    def __init__(
        self, directory: str | Path, start: float | None = None, end: float | None = None
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceError(f"{self.directory}: no such directory of scrapes")
        scrapes = sorted(_scrape_files(self.directory))
        if not scrapes:
            raise SourceError(
                f"{self.directory}: no scrape files (<unix time>.prom or .txt) in the directory"
            )
        lo = -math.inf if start is None else start
        hi = math.inf if end is None else end
        scrapes = [(t, path) for t, path in scrapes if lo <= t <= hi]
        if len(scrapes) < 2:
            raise SourceError(
                f"{self.directory}: {len(scrapes)} scrape(s) between {start} and {end}; "
                "increases need at least two"
            )
        self.start, self.end = scrapes[0][0], scrapes[-1][0]
        self._samples = _read_scrapes(scrapes)

    def describe(self) -> str:
        return f"scrapes in {self.directory}"

    def series(self, name: str) -> list[Series]:
        by_labels = self._samples.get(name, {})
        return [
            Series(dict(key), np.array(times), np.array(values))
            for key, (times, values) in by_labels.items()
        ]


def _scrape_files(directory: Path) -> list[tuple[float, Path]]:
    files = []
    for path in directory.iterdir():
        if path.suffix not in ScrapesSource.SUFFIXES:
            continue
        try:
            files.append((float(path.stem), path))
        except ValueError:
            raise SourceError(
                f"{path}: a scrape file is named by its Unix time (e.g. 1765000000.prom)"
            ) from None
    return files


_SampleHistory = dict[str, dict[tuple[tuple[str, str], ...], tuple[list[float], list[float]]]]


def _read_scrapes(scrapes: list[tuple[float, Path]]) -> _SampleHistory:
    samples: _SampleHistory = {}
    for t, path in scrapes:
        try:
            families = list(text_string_to_metric_families(read_text(path)))
        except TextFileError as err:
            raise SourceError(str(err)) from None
        except (ValueError, IndexError) as err:
            raise SourceError(f"{path}: not Prometheus exposition text: {err}") from None
        for family in families:
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                times, values = samples.setdefault(sample.name, {}).setdefault(key, ([], []))
                times.append(t)
                values.append(float(sample.value))
    return samples


def save_scrape(directory: str | Path, t: float, pages: Mapping[str, Mapping[str, str]]) -> Path:
    """Save one scrape of a fleet in the format :class:`ScrapesSource` reads: every page
    (exposition text, keyed by itself) with its target labels added to its series, in the file
    ``<t>.prom`` of ``directory``; return the file."""
    lines = []
    for text, labels in pages.items():
        for family in text_string_to_metric_families(text):
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                merged = {**sample.labels, **labels}
                inner = ",".join(
                    f'{k}="{escape_label_value(v)}"' for k, v in sorted(merged.items())
                )
                lines.append(f"{sample.name}{{{inner}}} {floatToGoString(sample.value)}")
    path = Path(directory) / f"{t:.3f}.prom"
    path.write_text("\n".join(lines) + "\n")
    return path
