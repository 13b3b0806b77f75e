"""``budgetpilot twin`` (a simulated fleet served as vLLM-like engines) and ``perf twin``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from envs.scenario_names import SCENARIO_NAMES
from slo.cli import echo_figures, positive

_MAPPINGS = ("vllm", "vllm-legacy", "sglang", "sglang-legacy")


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add the ``twin`` command to the root app and its benchmark to perf."""
    app.command("twin")(twin)
    perf.command("twin")(perf_twin)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; port 0 picks a free one) as ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: expected HOST:PORT such as 127.0.0.1:8000, got {listen!r}")
    return host, int(port)


def twin(
    scenario: Annotated[
        str,
        typer.Option(
            help=f"Scenario to run: {', '.join(SCENARIO_NAMES)}, or fleet-traffic (the fleet "
            "file's own traffic).",
            show_default=False,
        ),
    ],
    fleet: Annotated[
        Path | None,
        typer.Option(help="Fleet file to run instead of the reference fleet (examples/fleets/)."),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the scenario draw and the simulation.", min=0)
    ] = 0,
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve on (port 0: any).")] = (
        "127.0.0.1:8000"
    ),
    speed: Annotated[
        float, typer.Option(help="Simulated seconds per wall second.", callback=positive)
    ] = 1.0,
    mapping: Annotated[
        str, typer.Option(help=f"Metric names of the engines: {', '.join(_MAPPINGS)}.")
    ] = "vllm",
    elastic: Annotated[
        bool | None,
        typer.Option(
            "--elastic/--fixed",
            help="Pools that scale (POST /v1/replicas) or a fixed fleet.",
            show_default="the scenario's: elastic for the elastic scenarios",
        ),
    ] = None,
) -> None:
    """Run a scenario in accelerated real time, serving engine metrics and knobs over HTTP.

    Serves until Ctrl-C. Endpoints: GET /engines (elastic: with each replica's state,
    provisioning, serving or draining, and its pool's desired replicas), GET
    /engines/<replica>/metrics (503 while the replica is down or provisioning), GET
    /router/metrics, GET|POST /v1/knobs, GET|POST /v1/replicas (elastic: desired replicas per
    pool), GET /v1/state, GET /healthz.
    """
    import signal
    import threading

    from envs.twin import EngineTwin

    try:
        host, port = parse_listen(listen)
        engine_twin = EngineTwin(
            scenario, seed, speed, mapping=mapping, elastic=elastic, fleet=fleet
        )
    except (ValueError, FileNotFoundError) as exc:  # bad option or fleet file, trace data missing
        fail(str(exc))
    try:
        url = engine_twin.start(host, port)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")
    fleet = "elastic" if engine_twin.elastic else "fixed"
    typer.echo(
        f"budgetpilot twin: scenario {engine_twin.scenario} (seed {seed}, {fleet} fleet) at "
        f"{speed:g}x, {mapping} metrics, t={engine_twin.now:.0f} s"
    )
    rows = [(e["name"], e["metrics_url"]) for e in engine_twin.engines()]
    endpoints = _ENDPOINTS + (("replicas", "/v1/replicas"),) if engine_twin.elastic else _ENDPOINTS
    rows += [(name, f"{url}{path}") for name, path in endpoints]
    width = max(len(name) for name, _ in rows)
    for name, address in rows:
        typer.echo(f"  {name:<{width}}  {address}")
    typer.echo("Ctrl-C to stop.")
    # Stop as cleanly on a plain kill, and on Ctrl-C even when started with SIGINT ignored (a
    # background job of a non-interactive shell inherits it so).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    idle = threading.Event()
    try:
        # Timed waits: a signal the kernel hands to another thread is only acted on when the
        # main thread runs again, which an untimed wait may never let it do.
        while not idle.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        engine_twin.close()
    typer.echo(f"stopped at t={engine_twin.now:.0f} s")


_ENDPOINTS = (
    ("router", "/router/metrics"),
    ("engines", "/engines"),
    ("knobs", "/v1/knobs"),
    ("state", "/v1/state"),
    ("health", "/healthz"),
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (a usage or input error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def perf_twin(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Engine twin costs: scrape time and the speed-ups it sustains while scraped.

    On the steady scenario: wall time of one scrape of one replica, and the speed-ups it
    sustains with every endpoint scraped every 30 simulated seconds."""
    echo_figures(_benchmark(), as_json)


def _benchmark(interval_s: float = 30.0, intervals: int = 120, clock_wall_s: float = 5.0) -> dict:
    """Scrape cost and sustained speed-ups (see :func:`perf_twin`)."""
    import time
    import urllib.request

    import numpy as np

    from envs.twin import EngineTwin

    def scrape(url: str) -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(url) as response:
            response.read()
        return time.perf_counter() - start

    with EngineTwin("steady", seed=0, speed=0) as engine_twin:
        base = engine_twin.start()
        pages = [e["metrics_url"] for e in engine_twin.engines()] + [f"{base}/router/metrics"]
        fresh, repeat = [], []
        wall0 = time.perf_counter()
        for _ in range(intervals):
            engine_twin.step(interval_s)
            fresh.append(scrape(pages[0]))  # renders the interval's queued events
            for page in pages[1:]:
                scrape(page)
        stepped = intervals * interval_s / (time.perf_counter() - wall0)
        repeat = [scrape(pages[0]) for _ in range(100)]  # nothing queued: render and serve
        wall0 = time.perf_counter()
        engine_twin.step(intervals * interval_s)
        unscraped = intervals * interval_s / (time.perf_counter() - wall0)

    # The real clock, as fast as it goes, with a scraper taking every page each interval.
    with EngineTwin("steady", seed=0, speed=1e9) as engine_twin:
        base = engine_twin.start()
        pages = [e["metrics_url"] for e in engine_twin.engines()] + [f"{base}/router/metrics"]
        sim0, wall0 = engine_twin.now, time.perf_counter()
        next_scrape, clock_scrapes = sim0, []
        while time.perf_counter() - wall0 < clock_wall_s:
            if engine_twin.now >= next_scrape:
                next_scrape = engine_twin.now + interval_s
                clock_scrapes.append(scrape(pages[0]))
                for page in pages[1:]:
                    scrape(page)
            else:
                time.sleep(0.001)
        span = engine_twin.now - sim0
        clock = span / (time.perf_counter() - wall0)

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1e3, 3)

    return {
        "scenario": "steady",
        "scrape_interval_sim_s": interval_s,
        "scrape_one_replica_ms_p50": ms(fresh, 50),
        "scrape_one_replica_ms_p90": ms(fresh, 90),
        "scrape_one_replica_nothing_queued_ms_p50": ms(repeat, 50),
        "speedup_stepped_with_scrapes": round(stepped, 1),
        "speedup_stepped_without_scrapes": round(unscraped, 1),
        "speedup_clock_thread_with_scrapes": round(clock, 1),
        "clock_scrape_interval_sim_s_mean": round(span / max(len(clock_scrapes), 1), 1),
        "scrape_one_replica_ms_p90_under_clock": ms(clock_scrapes, 90),
    }
