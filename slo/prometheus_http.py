"""Requests to Prometheus's HTTP API, shared by every reader of it (the sidecar, ``fit``, the
tests' server).

Queries go as a POST form, as Prometheus's API documentation advises for large queries: the
sidecar's selectors name every replica it reads, and a fleet of a thousand replicas makes a
query string longer than what a proxy in front of Prometheus accepts in a URL (8 KB is a common
limit) and, at tens of thousands, than Prometheus's own limit on a request's headers (1 MB).
Prometheus documents ``/api/v1/query`` and ``/api/v1/query_range`` by POST, and Thanos's query
API takes them so too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPResponse


def api_request(
    url: str, path: str, params: Mapping[str, object], timeout_s: float
) -> HTTPResponse:
    """The response to ``path`` of the API at ``url`` with ``params`` in a form body.

    Raises what :func:`urllib.request.urlopen` raises (``HTTPError`` for an error status)."""
    form = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    return urllib.request.urlopen(request, timeout=timeout_s)


def error_message(error: urllib.error.HTTPError) -> str:
    """Prometheus's message in an error answer's JSON body (the HTTP reason without one)."""
    try:
        return str(json.loads(error.read()).get("error") or error.reason)[:200]
    except (ValueError, AttributeError, OSError):
        return str(error.reason)
