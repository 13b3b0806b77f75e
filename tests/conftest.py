"""Shared test configuration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Benchmarks pin their own threads; tests keep numba and BLAS to one thread so two test processes
# on a 2-core machine do not oversubscribe it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class PrometheusServer:
    """A real Prometheus server on loopback (Debian's `prometheus`), started by the fixture."""

    url: str
    config_path: Path
    process: subprocess.Popen

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """Run an instant query over the HTTP API and return its `result` list."""
        params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
        return self._get("/api/v1/query", params)["result"]

    def reload(self) -> None:
        """Re-read the configuration and rule files (needs --web.enable-lifecycle)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"))

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def kill_session(leader_pid: int) -> None:
    """SIGKILL every process of the session ``leader_pid`` leads (a child started with
    ``start_new_session=True``): the leader and what it started, even the processes that put
    themselves in process groups of their own (Ray's services and workers do)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader_pid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory for real Prometheus servers on loopback; skipped when `prometheus` is absent.

    Call it with `scrape_configs` (Prometheus's own YAML structure), optional `rule_files`
    and `evaluation_interval`; every server is stopped at teardown.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server (Debian package `prometheus`) is not installed")
    started: list[PrometheusServer] = []

    def start(
        scrape_configs: list[dict],
        rule_files: list[Path] = (),
        evaluation_interval: str = "1s",
        extra_args: list[str] = (),
    ) -> PrometheusServer:
        index = len(started)
        config_path = tmp_path / f"prometheus-{index}.yml"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": scrape_configs,
        }
        config_path.write_text(yaml.safe_dump(config))
        port = _free_port()
        command = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / f'tsdb-{index}'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
            *extra_args,
        ]
        log = (tmp_path / f"prometheus-{index}.log").open("w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        server = PrometheusServer(f"http://127.0.0.1:{port}", config_path, process)
        started.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log.name}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return server
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus did not become ready within 60 s: {log.name}")

    yield start
    for server in started:
        stop_process(server.process)
