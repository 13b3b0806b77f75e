"""Engine discovery: which replicas exist, where their metrics are and their lifecycle.

A fleet that scales has replicas coming and going: the sidecar lists them every scrape round (or
every ``discovery.refresh_s``) from a JSON listing, scrapes the serving and draining ones and
observes how many are provisioning, serving and draining (the replica features of an elastic
policy). A listing is either

* engine entries, as the engine twin's ``GET /engines`` gives them: ``name``, ``pool``,
  ``metrics_url`` (or ``url``), ``max_num_seqs``, and the lifecycle as ``state``
  (``provisioning|serving|draining``, :func:`lifecycle_of_state`) or as the engine's
  Kubernetes Pod object under ``pod`` (:func:`lifecycle_of_pod`); optionally its pool's
  ``desired_replicas``, and what the policy's envelope is checked against: its pool's
  ``tier`` (0 the strong one), the model it serves (``served_model``) and its ``gpu``;
* or Kubernetes Pods (a ``PodList`` or a list of Pods), each made an engine by
  :func:`engine_of_pod` with the ``discovery.pods`` settings.

An entry that cannot be read is skipped and reported; the listing as a whole fails only when it
cannot be fetched or is not JSON.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envs.contract import ReplicaLifecycle
from policies.sidecar.config import DiscoverySettings, PodDiscoverySettings

#: Lifecycle states by the names a listing gives them (a stopped replica is not listed).
STATES: dict[str, ReplicaLifecycle] = {
    "provisioning": ReplicaLifecycle.PROVISIONING,
    "serving": ReplicaLifecycle.SERVING,
    "draining": ReplicaLifecycle.DRAINING,
}
#: Lifecycle states whose engine exports metrics (the ones scraped).
SCRAPED = (ReplicaLifecycle.SERVING, ReplicaLifecycle.DRAINING)
#: Largest listing read (a namespace's PodList of hundreds of pods is a few MB).
MAX_LISTING_BYTES = 32 * 1024 * 1024


class DiscoveryError(RuntimeError):
    """The listing could not be fetched or read (the message says why)."""


@dataclass(frozen=True)
class DiscoveredEngine:
    """One replica of a listing.

    Parameters
    ----------
    name:
        Unique name (the Pod's, or the engine's).
    pool:
        Its pool.
    url:
        Its metrics URL (``None`` while a Pod has no IP yet).
    max_num_seqs:
        Its batch limit.
    lifecycle:
        Its :class:`ReplicaLifecycle` (``SERVING`` when the listing does not say).
    tier, model, gpu:
        Its pool's tier, the model it serves and its GPU kind (``None``: not listed).
    """

    name: str
    pool: str
    url: str | None
    max_num_seqs: int
    lifecycle: ReplicaLifecycle
    tier: int | None = None
    model: str | None = None
    gpu: str | None = None

    @property
    def scraped(self) -> bool:
        """Whether its engine exports metrics (serving or draining, with a URL)."""
        return self.lifecycle in SCRAPED and self.url is not None


@dataclass(frozen=True)
class Listing:
    """A discovery listing read.

    Parameters
    ----------
    engines:
        The replicas listed (stopped ones left out).
    desired:
        Desired replicas per pool, when the listing gives them.
    reports_lifecycle:
        Whether every entry said its lifecycle (``state`` or a Pod).
    problems:
        Entries skipped, and why.
    """

    engines: tuple[DiscoveredEngine, ...]
    desired: dict[str, int]
    reports_lifecycle: bool
    problems: tuple[str, ...]


def lifecycle_of_state(state: str) -> ReplicaLifecycle:
    """The lifecycle a listing's ``state`` names (``provisioning``, ``serving``,
    ``draining``).

    Raises
    ------
    ValueError
        For any other value (naming the known ones).
    """
    try:
        return STATES[state]
    except (KeyError, TypeError):
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}") from None


def lifecycle_of_pod(pod: Mapping[str, Any]) -> ReplicaLifecycle:
    """The lifecycle of a replica from its Kubernetes Pod object.

    A Pod being deleted (``metadata.deletionTimestamp`` set: Terminating) is draining; a Pod
    whose ``Ready`` condition is ``True`` is serving; a Pod that ran to its end (phase
    ``Succeeded`` or ``Failed``) is stopped; any other (Pending, containers starting, readiness
    probe not passed yet) is provisioning.
    """
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return ReplicaLifecycle.STOPPED
    if metadata.get("deletionTimestamp"):
        return ReplicaLifecycle.DRAINING
    conditions = status.get("conditions") or ()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ReplicaLifecycle.SERVING if ready else ReplicaLifecycle.PROVISIONING


def engine_of_pod(pod: Mapping[str, Any], settings: PodDiscoverySettings) -> DiscoveredEngine:
    """The engine of a Kubernetes Pod: its name, its pool (label ``settings.pool_label``), its
    metrics URL (``status.podIP``, ``settings.port`` and ``settings.path``), its pool's
    ``max_num_seqs`` and its lifecycle (:func:`lifecycle_of_pod`).

    Raises
    ------
    ValueError
        The Pod has no name, no pool label, or a pool without ``max_num_seqs``.
    """
    metadata = pod.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise ValueError("a Pod without metadata.name")
    pool = (metadata.get("labels") or {}).get(settings.pool_label)
    if pool is None:
        raise ValueError(f"Pod {name!r} has no label {settings.pool_label!r} naming its pool")
    if pool not in settings.max_num_seqs:
        raise ValueError(
            f"Pod {name!r}: pool {pool!r} has no discovery.pods.max_num_seqs "
            f"(pools: {', '.join(settings.max_num_seqs)})"
        )
    ip = (pod.get("status") or {}).get("podIP")
    host = f"[{ip}]" if ip and ":" in ip else ip
    url = f"{settings.scheme}://{host}:{settings.port}{settings.path}" if ip else None
    return DiscoveredEngine(
        str(name), str(pool), url, settings.max_num_seqs[pool], lifecycle_of_pod(pod)
    )


def engine_of_entry(entry: Mapping[str, Any]) -> tuple[DiscoveredEngine, bool]:
    """The engine of a listing entry and whether the entry gave its lifecycle (``state``, or
    ``pod``: its Pod object; without either it counts as serving).

    Raises
    ------
    ValueError
        A field is missing or invalid (naming it).
    """
    try:
        name, pool = str(entry["name"]), str(entry["pool"])
        url = entry.get("metrics_url", entry.get("url"))
        max_num_seqs = entry["max_num_seqs"]
    except KeyError as exc:
        raise ValueError(f"entry without {exc.args[0]!r}") from None
    if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise ValueError(f"engine {name!r}: max_num_seqs must be a whole number >= 1")
    if "pod" in entry:
        lifecycle = lifecycle_of_pod(entry["pod"])
    elif "state" in entry:
        lifecycle = lifecycle_of_state(entry["state"])
    else:
        lifecycle = ReplicaLifecycle.SERVING
    reported = "pod" in entry or "state" in entry
    url = None if url is None else str(url)
    tier = entry.get("tier")
    if tier is not None and (type(tier) is not int or tier < 0):
        raise ValueError(f"engine {name!r}: tier must be a whole number >= 0, got {tier!r}")
    model, gpu = (_optional_text(entry, key, name) for key in ("served_model", "gpu"))
    engine = DiscoveredEngine(name, pool, url, max_num_seqs, lifecycle, tier, model, gpu)
    return engine, reported


def _optional_text(entry: Mapping[str, Any], key: str, name: str) -> str | None:
    """A listing entry's optional non-empty text field."""
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"engine {name!r}: {key} must be a non-empty string, got {value!r}")
    return value


def read_listing(document: Any, pods: PodDiscoverySettings | None = None) -> Listing:
    """Read a decoded listing (see the module docstring).

    Raises
    ------
    DiscoveryError
        The document is neither a list of entries nor a Kubernetes list (``items``).
    """
    items = document.get("items") if isinstance(document, Mapping) else document
    if not isinstance(items, list):
        raise DiscoveryError(
            "expected a JSON list of engines or a Kubernetes list with items, got "
            f"{type(document).__name__}"
        )
    engines: list[DiscoveredEngine] = []
    desired: dict[str, int] = {}
    problems: list[str] = []
    reported = True
    for i, item in enumerate(items):
        try:
            engine, said = _read_item(item, pods)
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"entry {i}: {exc}")
            continue
        reported &= said
        if type(item.get("desired_replicas")) is int:
            desired[engine.pool] = item["desired_replicas"]
        if engine.lifecycle != ReplicaLifecycle.STOPPED:
            engines.append(engine)
    names = [e.name for e in engines]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"names listed more than once (first kept): {repeated}")
        engines = [e for i, e in enumerate(engines) if e.name not in names[:i]]
    return Listing(tuple(engines), desired, reported and bool(items), tuple(problems))


def _read_item(item: Any, pods: PodDiscoverySettings | None) -> tuple[DiscoveredEngine, bool]:
    if not isinstance(item, Mapping):
        raise ValueError(f"expected an object, got {type(item).__name__}")
    if item.get("kind") == "Pod" or ("metadata" in item and "name" not in item):
        if pods is None:
            raise ValueError("a Kubernetes Pod, but discovery.pods does not say how to read Pods")
        return engine_of_pod(item, pods), True
    return engine_of_entry(item)


class Discovery:
    """Fetches and reads a discovery listing.

    Parameters
    ----------
    settings:
        The listing's URL, deadline and Pod settings.
    """

    def __init__(self, settings: DiscoverySettings) -> None:
        self.settings = settings
        self._tls = None
        if settings.ca_file is not None:
            self._tls = ssl.create_default_context(cafile=str(settings.ca_file))

    def _request(self) -> urllib.request.Request:
        headers = {"Accept": "application/json"}
        if self.settings.token_file is not None:
            try:  # read each time: service-account tokens are rotated on disk
                token = self.settings.token_file.read_text().strip()
            except OSError as exc:
                raise DiscoveryError(f"discovery.token_file: {exc}") from None
            headers["Authorization"] = f"Bearer {token}"
        return urllib.request.Request(self.settings.url, headers=headers)

    def fetch(self) -> Listing:
        """The current listing.

        Raises
        ------
        DiscoveryError
            The URL does not answer 200 with JSON in time, or the JSON is not a listing.
        """
        url = self.settings.url
        request = self._request()
        timeout = self.settings.timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as response:
                body = response.read(MAX_LISTING_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise DiscoveryError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DiscoveryError(f"GET {url}: {exc}") from None
        if len(body) > MAX_LISTING_BYTES:
            raise DiscoveryError(f"GET {url}: listing larger than {MAX_LISTING_BYTES} bytes")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DiscoveryError(f"GET {url}: not JSON: {exc}") from None
        try:
            return read_listing(document, self.settings.pods)
        except DiscoveryError as exc:
            raise DiscoveryError(f"GET {url}: {exc}") from None


def scraped_endpoints(engines: Sequence[DiscoveredEngine]) -> list[tuple[str, str]]:
    """``(name, url)`` of the engines to scrape: serving and draining ones with a URL."""
    return [(e.name, e.url) for e in engines if e.scraped and e.url is not None]
