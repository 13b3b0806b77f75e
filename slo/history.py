"""Metrics history for Prometheus: successive scrapes as OpenMetrics, backfilled with promtool.

A Prometheus that has scraped a fleet for weeks holds the history a fresh sidecar bootstraps
its budgets from. :class:`OpenMetricsHistory` collects timestamped scrapes of several endpoints
(exposition text, e.g. the engine twin's pages or :class:`slo.exposition.ExpositionRenderer`'s),
each endpoint's series labelled as Prometheus's targets would be (``replica``, ``pool``...), and
writes them as one OpenMetrics file; :func:`backfill` turns that file into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics`` (Debian package ``prometheus``), for a
Prometheus started on that storage directory.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from slo.metrics import MetricMapping, load_mapping, metric_source
from slo.spec import ServiceSpec


class OpenMetricsHistory:
    """Timestamped scrapes of many endpoints, written as one OpenMetrics exposition.

    Parameters
    ----------
    keep:
        Which series to keep (default: all); a history of the series a reader needs is much
        smaller than one of whole pages.
    """

    def __init__(self, keep: SLISeries | None = None) -> None:
        self.keep = keep
        self._types: dict[str, str] = {}
        self._samples: dict[str, list[Sample]] = {}

    def add(self, t: float, text: str, labels: Mapping[str, str]) -> None:
        """Add one scrape taken at ``t`` (Unix seconds), its series given ``labels`` (the
        target labels), in time order per endpoint."""
        if self.keep is not None:  # parsing is the cost: only kept lines reach the parser
            text = "\n".join(
                line
                for line in text.splitlines()
                if line.startswith("#") or line.split("{", 1)[0].split(" ", 1)[0] in self.keep.names
            )
        for family in text_string_to_metric_families(text):
            samples = [
                Sample(s.name, {**s.labels, **labels}, s.value, t)
                for s in family.samples
                if self.keep is None or self.keep.keeps(s.name, s.labels)
            ]
            if samples:
                self._types.setdefault(family.name, family.type)
                self._samples.setdefault(family.name, []).extend(samples)

    def write(self, out: IO[str]) -> None:
        """Write the OpenMetrics text (families grouped, ``# EOF`` last)."""
        for name, samples in self._samples.items():
            write_family(out, name, self._types[name], samples)
        out.write("# EOF\n")


def write_family(out: IO[str], name: str, kind: str, samples: Iterable[Sample]) -> None:
    """Write one metric family's timestamped samples as OpenMetrics (without ``# EOF``)."""
    out.write(f"# TYPE {name} {'unknown' if kind == 'untyped' else kind}\n")
    for sample in samples:
        inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(sample.labels.items()))
        out.write(
            f"{sample.name}{{{inner}}} {floatToGoString(sample.value)} {sample.timestamp:.3f}\n"
        )


@dataclass(frozen=True)
class SLISeries:
    """The series the ``llm`` SLIs of a spec are computed from (what a history for the budgets
    needs to hold): sample ``names``, and of histograms only the buckets at the SLO thresholds
    and ``+Inf``. Fairness SLIs are left out: their slices are judged live."""

    names: frozenset[str]
    bounds: Mapping[str, frozenset[float]]

    @classmethod
    def of(cls, spec: ServiceSpec, mapping: str | MetricMapping = "vllm") -> SLISeries:
        mapping = load_mapping(mapping)
        names: set[str] = set()
        bounds: dict[str, set[float]] = {}
        for slo in spec.engine_slos:
            source = metric_source(slo, spec, mapping)
            if source.kind == "tenant_sli_events":
                continue
            if source.kind == "histogram":
                names |= {f"{source.metric}_bucket", f"{source.metric}_count"}
                bounds.setdefault(f"{source.metric}_bucket", {math.inf}).add(source.threshold)
            else:
                names.add(source.metric)
        return cls(frozenset(names), {k: frozenset(v) for k, v in bounds.items()})

    def keeps(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the sample is one of the series."""
        if name not in self.names:
            return False
        bounds = self.bounds.get(name)
        return bounds is None or float(labels.get("le", "nan")) in bounds


def backfill(openmetrics: Path, tsdb: Path) -> None:
    """Write the samples of an OpenMetrics file as TSDB blocks (of two hours) into ``tsdb``.

    Raises
    ------
    FileNotFoundError
        promtool is not installed.
    RuntimeError
        promtool refused the file (its message included).
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool (Debian package `prometheus`) is not installed")
    tsdb.mkdir(parents=True, exist_ok=True)
    command = [
        promtool,
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        str(openmetrics),
        str(tsdb),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"promtool backfill of {openmetrics} failed: {done.stderr[-2000:]}")


def escape_label_value(value: str) -> str:
    """A label value escaped for the exposition formats (backslash, newline, double quote)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
