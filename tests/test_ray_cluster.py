"""A real two-node Ray cluster on this machine: ``train --address`` places trials on both nodes
(as Ray's state API reports), a trial killed on the second node resumes from its checkpoint, and
a node joining without the package makes a new run stop before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import kill_session, stop_process
from test_training import TINY, write_preset

from slo.prometheus_server import free_port

#: A node's ``sitecustomize``: budgetpilot's ``training`` package is absent there.
ABSENT_PACKAGE = """import importlib.abc, sys


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "training":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
"""
#: Ray's CLI on this interpreter, wherever pip put its scripts.
RAY_CLI = (sys.executable, "-m", "ray.scripts.scripts")
#: Generous: Ray's services start slowly on a loaded machine.
DEADLINE_S = 300.0


@dataclass
class RayCluster:
    """Ray nodes started by ``ray start --block``, each the leader of its own session."""

    address: str
    temp_dir: str
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def add_node(self, log: Path, *options: str, env: dict[str, str] | None = None) -> dict:
        """Start a node with ``options`` (the head: ``--head --port``; a worker: ``--address``)
        and wait until it is alive; return it as the state API lists it. A node that gives up
        during startup (Ray waits a fixed 30 s for it to register, too little on a loaded
        machine) is started again, twice at most."""
        ports = [
            f"--{name}-port={free_port()}"
            for name in ("dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent")
        ]
        command = [
            *RAY_CLI,
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            "--num-cpus=1",
            f"--metrics-export-port={free_port()}",
            *ports,
            *options,
        ]
        before = {node["node_id"] for node in self.state("nodes")} if self.nodes else set()
        for attempt in range(3):
            with log.with_suffix(f".{attempt}.log").open("w") as out:
                node = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self.nodes.append(node)
            alive = self._wait_for_nodes(len(before) + 1, node)
            if alive is not None:
                (new,) = [n for n in alive if n["node_id"] not in before]
                return new
            kill_session(node.pid)
        raise AssertionError(f"the node did not start: see {log.parent}")

    def state(self, kind: str, *options: str) -> list[dict]:
        """Alive ``kind`` ("nodes", "actors") as Ray's state API lists them (its CLI, in a fresh
        process: this one may hold another Ray's token from earlier tests)."""
        command = [*RAY_CLI, "list", kind, "--address", self.address, "--format", "json"]
        listing = subprocess.run(
            [*command, "--filter", "state=ALIVE", *options],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        # An empty listing is a sentence ("No resource in the cluster"), not JSON.
        return json.loads(listing.stdout) if listing.stdout.lstrip().startswith("[") else []

    def _wait_for_nodes(self, count: int, starting: subprocess.Popen) -> list[dict] | None:
        """The alive nodes once there are ``count``, or ``None`` if ``starting`` exits first."""
        deadline = time.monotonic() + DEADLINE_S
        while starting.poll() is None:
            try:
                nodes = self.state("nodes", "--detail")
                if len(nodes) == count:
                    return nodes
                problem = f"{len(nodes)} nodes alive"
            except subprocess.CalledProcessError as exc:  # the dashboard is not serving yet
                problem = exc.stderr[-500:]
            assert time.monotonic() < deadline, f"no {count} nodes alive: {problem}"
            time.sleep(1.0)
        return None

    def stop(self) -> None:
        """Stop every node by its process id: SIGTERM, then SIGKILL what it left running."""
        for node in reversed(self.nodes):
            stop_process(node, grace_s=20.0)
            kill_session(node.pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RayCluster]:
    """A head node (one CPU, with the dashboard serving the state API) and a second node with one
    CPU and a resource of its own, on free ports (never Ray's default 6379).

    The cluster has a token of its own, given to its nodes, drivers and this process through the
    environment (the default, ``~/.ray/auth_token``, is shared with every other Ray here).
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", uuid.uuid4().hex)
    port = free_port()
    # A short temporary directory: Ray's Unix sockets live under it.
    cluster = RayCluster(f"127.0.0.1:{port}", tempfile.mkdtemp(prefix="bp-ray-"))
    try:
        cluster.add_node(
            tmp_path / "head.log",
            "--head",
            f"--port={port}",
            f"--temp-dir={cluster.temp_dir}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}",
        )
        cluster.add_node(
            tmp_path / "second.log",
            f"--address={cluster.address}",
            '--resources={"second_node": 1}',
        )
        yield cluster
    finally:
        cluster.stop()


def _train(cluster: RayCluster, out: Path, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "eval.cli", "train", "--out", str(out)]
    log = (out.parent / f"{out.name}-{len(list(out.parent.glob('*.log')))}.log").open("w")
    # Run from the runs' directory: Ray puts the driver's working directory on its workers' path.
    return subprocess.Popen(
        [*command, "--address", cluster.address, *options],
        cwd=out.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _trial_actors(cluster: RayCluster) -> list[dict]:
    """Ray's state API: the alive actors running trials (one per trial)."""
    actors = cluster.state("actors", "--detail")
    return [
        a for a in actors if "train_trial" in a["class_name"] or a["class_name"] == "ImplicitFunc"
    ]


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


@pytest.mark.slow
def test_training_spreads_over_two_nodes_resumes_a_killed_trial_and_refuses_bare_nodes(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    # Two tiny trials, one per node, of four chunks: one is killed between checkpoints.
    preset = write_preset(tmp_path)
    runs, storage = tmp_path / "runs", tmp_path / "shared"
    runs.mkdir()
    out = runs / "cluster"
    first = _train(
        ray_cluster, out, "--preset", str(preset), "--seeds", "2", "--storage", str(storage)
    )
    try:
        experiment = storage / "cluster"
        deadline = time.monotonic() + DEADLINE_S
        while (
            len(list(experiment.glob("seed*/checkpoint_*/run.json"))) < 2
            or len(actors := _trial_actors(ray_cluster)) < 2
        ):
            assert first.poll() is None, "the run ended before both trials checkpointed"
            assert time.monotonic() < deadline, "the trials did not both reach a checkpoint"
            time.sleep(0.2)
        nodes = {node["node_id"]: node for node in ray_cluster.state("nodes", "--detail")}
        assert {actor["node_id"] for actor in actors} == set(nodes), "trials not on both nodes"
        (victim,) = [a for a in actors if "second_node" in nodes[a["node_id"]]["resources_total"]]
        os.kill(victim["pid"], 9)
        assert first.wait(timeout=DEADLINE_S) == 1  # one trial errored
    finally:
        kill_session(first.pid)
    summary = json.loads((out / "summary.json").read_text())
    (killed,) = [t for t in summary["trials"] if t["error"]]
    assert killed["steps"] < TINY["timesteps"]

    resumed = _train(ray_cluster, out, "--resume")
    try:
        assert resumed.wait(timeout=DEADLINE_S) == 0
    finally:
        kill_session(resumed.pid)
    summary = json.loads((out / "summary.json").read_text())
    assert [t["steps"] for t in summary["trials"]] == [TINY["timesteps"]] * 2
    assert not any(t["error"] for t in summary["trials"])
    results = _results(experiment / killed["trial"])
    restarts = [r for r in results if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, "the killed trial was not restored"
    # It continued from its checkpoint, one chunk on, rather than from zero.
    assert restarts[1]["timesteps"] >= restarts[0]["timesteps"] + TINY["chunk_timesteps"]

    _refuse_a_node_without_the_package(ray_cluster, tmp_path)


def _refuse_a_node_without_the_package(cluster: RayCluster, tmp_path: Path) -> None:
    """Add a node on which the package cannot be imported: a ``sitecustomize`` on its path
    refuses ``training`` before any finder (an editable install's included) looks for it.
    A new run names that node and writes nothing."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(ABSENT_PACKAGE)
    before = {node["node_id"] for node in cluster.state("nodes")}
    env = os.environ | {"PYTHONPATH": str(shadow)}
    bare = cluster.add_node(tmp_path / "bare.log", f"--address={cluster.address}", env=env)
    out = tmp_path / "runs" / "refused"
    run = _train(cluster, out, "--preset", str(write_preset(tmp_path)))
    try:
        assert run.wait(timeout=DEADLINE_S) == 2
    finally:
        kill_session(run.pid)
    log = next(out.parent.glob("refused-*.log")).read_text()
    assert "Ray nodes that cannot import the budgetpilot package" in log
    assert f"({bare['node_id'][:12]}): ModuleNotFoundError: No module named 'training'" in log
    assert not any(node_id[:12] in log for node_id in before)
    assert not out.exists()
