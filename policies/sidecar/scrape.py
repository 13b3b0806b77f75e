"""Concurrent HTTP scrapes of many endpoints, each within a deadline.

Each endpoint keeps one HTTP/1.1 connection open between scrapes (engines serve ``/metrics``
with keep-alive; reconnecting 64 endpoints every cycle would cost more than parsing them). A
scrape that misses the deadline is reported as a timeout; its thread finishes in the background
and the endpoint is skipped, not scraped twice at once, until it does. The endpoints may change
between rounds (:meth:`Scraper.set_endpoints`, for replicas that come and go).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Scrape error kinds (the ``kind`` label of ``budgetpilot_sidecar_scrape_errors_total``).
ERROR_KINDS = ("timeout", "connection", "http_status", "too_large", "decode", "parse")


@dataclass(frozen=True)
class ScrapeResult:
    """One endpoint's scrape: the parsed page, or what went wrong.

    Parameters
    ----------
    endpoint:
        Endpoint name.
    value:
        What the parse function returned for the page (``None`` on error).
    error:
        One of :data:`ERROR_KINDS`, or ``None``.
    detail:
        Human-readable error description.
    seconds:
        Wall time of the scrape.
    """

    endpoint: str
    value: Any = None
    error: str | None = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class ScrapeFailure(Exception):
    """A scrape failed; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class _Endpoint:
    """One endpoint's URL and kept-alive connection (used by one scrape at a time)."""

    def __init__(self, name: str, url: str, timeout_s: float, max_bytes: int) -> None:
        parts = urlsplit(url)
        self.name, self.url = name, url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.busy = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    def fetch(self) -> str:
        """GET the page (one retry on a fresh connection when a kept-alive one was closed)."""
        reused = self._connection is not None
        try:
            return self._get()
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            self.close()
            if not reused:
                raise
        return self._get()

    def _get(self) -> str:
        if self._connection is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._connection = cls(self.host, self.port, timeout=self.timeout_s)
        connection = self._connection
        connection.request("GET", self.path, headers={"Accept": "text/plain"})
        response = connection.getresponse()
        body = response.read(self.max_bytes + 1)
        if response.will_close:
            self.close()
        if response.status != 200:
            raise ScrapeFailure("http_status", f"HTTP {response.status} {response.reason}")
        if len(body) > self.max_bytes:
            self.close()  # the rest of the body is still on the connection
            raise ScrapeFailure("too_large", f"page larger than {self.max_bytes} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScrapeFailure("decode", f"page is not UTF-8: {exc}") from None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Scraper:
    """Scrapes endpoints concurrently and parses each page in the scraping thread.

    Parameters
    ----------
    endpoints:
        ``(name, url)`` pairs.
    timeout_s:
        Deadline of each endpoint's scrape and of a whole round.
    max_workers:
        Threads scraping at once (started as needed).
    max_page_bytes:
        Larger pages are refused.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, str]],
        *,
        timeout_s: float = 2.0,
        max_workers: int = 16,
        max_page_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.timeout_s = float(timeout_s)
        self.max_page_bytes = int(max_page_bytes)
        self._endpoints: list[_Endpoint] = []
        self.set_endpoints(endpoints)
        self._pool = ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="sidecar-scrape")

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """The ``(name, url)`` pairs scraped, in order."""
        return [(e.name, e.url) for e in self._endpoints]

    def set_endpoints(self, endpoints: Sequence[tuple[str, str]]) -> None:
        """Scrape ``endpoints`` from the next round on: endpoints kept (same name and URL) keep
        their connection; the connections of the others are closed (a scrape still running in
        the background keeps its own until it ends)."""
        kept = {(e.name, e.url): e for e in self._endpoints}
        wanted = [(str(n), str(u)) for n, u in endpoints]
        for key, endpoint in kept.items():
            if key not in wanted and endpoint.busy.acquire(blocking=False):
                endpoint.close()
                endpoint.busy.release()
        self._endpoints = [
            kept.get(key) or _Endpoint(*key, self.timeout_s, self.max_page_bytes) for key in wanted
        ]

    def scrape(self, parse: Callable[[str, str], Any]) -> dict[str, ScrapeResult]:
        """Scrape every endpoint; ``parse(endpoint, text)`` turns a page into the result value
        (a :class:`ScrapeFailure` it raises is reported with its kind, anything else as
        ``parse``)."""
        futures: dict[str, Future[ScrapeResult]] = {}
        results: dict[str, ScrapeResult] = {}
        for endpoint in self._endpoints:
            if not endpoint.busy.acquire(blocking=False):
                results[endpoint.name] = ScrapeResult(
                    endpoint.name, error="timeout", detail="the previous scrape is still running"
                )
                continue
            futures[endpoint.name] = self._pool.submit(self._scrape_one, endpoint, parse)
        wait(futures.values(), timeout=self.timeout_s)
        for name, future in futures.items():
            if future.done():
                results[name] = future.result()
            else:
                detail = f"no answer within {self.timeout_s:g} s"
                results[name] = ScrapeResult(name, error="timeout", detail=detail)
        return {e.name: results[e.name] for e in self._endpoints}

    def _scrape_one(self, endpoint: _Endpoint, parse: Callable[[str, str], Any]) -> ScrapeResult:
        start = time.perf_counter()
        try:
            text = endpoint.fetch()
            value = parse(endpoint.name, text)
            return ScrapeResult(endpoint.name, value, seconds=time.perf_counter() - start)
        except Exception as exc:  # every failure of one endpoint is that endpoint's result
            kind, detail = _classify(exc)
            if kind in ("timeout", "connection"):
                endpoint.close()
            elapsed = time.perf_counter() - start
            return ScrapeResult(endpoint.name, error=kind, detail=detail, seconds=elapsed)
        finally:
            endpoint.busy.release()

    def close(self) -> None:
        """Stop the threads and close the connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for endpoint in self._endpoints:
            endpoint.close()


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ScrapeFailure):
        return exc.kind, str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", f"timed out: {exc}"
    if isinstance(exc, OSError | http.client.HTTPException):
        return "connection", f"{type(exc).__name__}: {exc}"
    return "parse", f"{type(exc).__name__}: {exc}"[:300]
