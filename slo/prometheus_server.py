"""A real Prometheus server on loopback (Debian's ``prometheus``), for tests and benchmarks.

:func:`start_prometheus` writes a configuration (scrape configs, rule files), starts the server
on a free port with its storage in a given directory (which may hold backfilled blocks, see
:mod:`slo.history`) and waits until it is ready.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from slo.prometheus_http import api_request


@dataclass
class PrometheusServer:
    """A Prometheus server started by :func:`start_prometheus`."""

    url: str
    config_path: Path
    process: subprocess.Popen

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Run an instant query over the HTTP API and return its `result` list."""
        params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
        return self._request("/api/v1/query", params)["result"]

    def alerts(self) -> list[dict]:
        """The alerts pending or firing now (``/api/v1/alerts``, which only answers GET)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["alerts"]

    def reload(self) -> None:
        """Re-read the configuration and rule files (needs --web.enable-lifecycle)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"))

    def _request(self, path: str, params: dict) -> dict:
        with api_request(self.url, path, params, timeout_s=10.0) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]


def scrape_configs(
    base_url: str,
    engines: Sequence[Mapping[str, Any]],
    router_path: str | None = "/router/metrics",
    scrape_interval: str | None = None,
) -> list[dict[str, Any]]:
    """Prometheus ``scrape_configs`` for engines served under ``base_url`` (the engine twin's
    ``GET /engines`` listing, or any list of ``name``, ``metrics_url`` and optional ``pool``):
    one target per engine labelled ``replica`` (and ``pool``), and the router
    (``replica="router"``), as a fleet's service discovery would label its pods."""
    address = urlsplit(base_url).netloc

    def target(name: str, path: str, pool: str | None) -> dict[str, Any]:
        labels = {"replica": name, "__metrics_path__": path} | ({"pool": pool} if pool else {})
        return {"targets": [address], "labels": labels}

    interval = {} if scrape_interval is None else {"scrape_interval": scrape_interval}
    replicas = [target(e["name"], urlsplit(e["metrics_url"]).path, e.get("pool")) for e in engines]
    configs = [{"job_name": "engines", **interval, "static_configs": replicas}]
    if router_path is not None:
        router = [target("router", router_path, None)]
        configs.append({"job_name": "router", **interval, "static_configs": router})
    return configs


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_prometheus(
    config_path: Path,
    storage: Path,
    scrape_configs: list[dict],
    rule_files: Sequence[Path] = (),
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    extra_args: Sequence[str] = (),
    ready_within_s: float = 60.0,
) -> PrometheusServer:
    """Start a Prometheus server on a free loopback port and wait until it is ready.

    It is configured by ``config_path`` (written here), stores in ``storage`` (which may hold
    backfilled blocks, see :mod:`slo.history`) and logs beside its config (``.log``).

    Raises
    ------
    FileNotFoundError
        The ``prometheus`` binary is not installed.
    RuntimeError
        The server exited or was not ready in time (the log is named).
    """
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("the prometheus server (Debian package `prometheus`) is absent")
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": scrape_configs,
    }
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
        *extra_args,
    ]
    log = config_path.with_suffix(".log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", config_path, process)
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.name}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"prometheus did not become ready within {ready_within_s:g} s: {log.name}")
