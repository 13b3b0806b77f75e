"""Shared test configuration."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from slo.prometheus_server import PrometheusServer, start_prometheus

# Benchmarks pin their own threads; tests keep numba and BLAS to one thread so two test processes
# on a 2-core machine do not oversubscribe it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _capacity_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fleet capacities measured by tests go to a cache of this session, not the user's."""
    previous = os.environ.get("BUDGETPILOT_CACHE_DIR")
    os.environ["BUDGETPILOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["BUDGETPILOT_CACHE_DIR"]
    else:
        os.environ["BUDGETPILOT_CACHE_DIR"] = previous


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


def finish_process(
    process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 30.0
) -> tuple[str | bytes | None, str | bytes | None]:
    """Ask a child process to stop with ``sig`` and return its ``(stdout, stderr)``; one that
    has not exited within ``grace_s`` is killed (no orphan survives the test) and fails it."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        stop_process(process)
        process.communicate()
        pytest.fail(f"pid {process.pid} ignored {signal.Signals(sig).name} for {grace_s} s: killed")


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
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus server (Debian package `prometheus`) is not installed")
    started: list[PrometheusServer] = []

    def start(
        scrape_configs: list[dict],
        rule_files: list[Path] = (),
        evaluation_interval: str = "1s",
        extra_args: list[str] = (),
    ) -> PrometheusServer:
        index = len(started)
        server = start_prometheus(
            tmp_path / f"prometheus-{index}.yml",
            tmp_path / f"tsdb-{index}",
            scrape_configs,
            rule_files,
            evaluation_interval=evaluation_interval,
            extra_args=extra_args,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        stop_process(server.process)
