"""``budgetpilot sidecar``.

Only typer is imported at module level; the sidecar's modules load inside the commands, so that
``budgetpilot`` starts fast and the sidecar process never loads the training stack.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from agents.baseline_names import BASELINE_NAMES
from slo.cli import MAPPING_HELP, positive

#: Where ``--twin`` runs append their decisions unless told otherwise (a demo one can replay).
TWIN_AUDIT_LOG = Path("sidecar-audit.jsonl")


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add ``sidecar`` to the root app (its benchmark, ``perf sidecar``, is in :mod:`eval`)."""
    app.command("sidecar")(sidecar)


def sidecar(
    config: Annotated[Path | None, typer.Option(help="Sidecar YAML config.")] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Exported policy (NAME.onnx, manifest NAME.json beside).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.", show_default="127.0.0.1")] = (
        None
    ),
    port: Annotated[
        int | None, typer.Option(help="Listen port.", min=0, max=65535, show_default="9464")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(help="Seconds between decisions.", callback=positive, show_default="30"),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(help="An engine: 'name=N,url=U,pool=P,max_num_seqs=K' (repeatable)."),
    ] = None,
    counters: Annotated[
        list[str] | None, typer.Option(help="URL of a router's budgetpilot counters (repeatable).")
    ] = None,
    fleet_capacity: Annotated[
        str | None,
        typer.Option(
            help="Requests/s each role of the fleet serves saturated, 'strong=RPS,cheap=RPS': "
            "a policy of observation contract v3 observes load relative to them (budgetpilot "
            "simulate --fleet F --capacity measures a fleet file's; --twin reads the twin's)."
        ),
    ] = None,
    twin: Annotated[
        str | None,
        typer.Option(
            help="Engine twin base URL: its engines (an elastic twin's as discovery), router "
            "counters and control API; an elastic policy without a scaling section scales the "
            "twin's pools (deployment = pool, 1 to the policy's cap, 1 replica per interval)."
        ),
    ] = None,
    mapping: Annotated[str | None, typer.Option(help=MAPPING_HELP, show_default="vllm")] = None,
    shadow: Annotated[
        bool | None, typer.Option("--shadow/--no-shadow", help="Decide and log, do not actuate.")
    ] = None,
    fallback: Annotated[
        str | None,
        typer.Option(
            help=f"Baseline that takes over on stale metrics: {', '.join(BASELINE_NAMES)}.",
            show_default="reactive",
        ),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            help="JSONL audit log of decisions.",
            show_default=f"the config's; with --twin {TWIN_AUDIT_LOG}",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Directory of the persisted state.")
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="Token of the POST endpoints.")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One cycle: print the decision as JSON and exit.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the config against the policy and exit.")
    ] = False,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning, error.", show_default="info")
    ] = None,
) -> None:
    """Govern a fleet's knobs with an exported policy, beside the serving stack.

    Scrape engine metrics, compute burn rates, decide every interval through guardrails,
    actuate (router manifests, scale manifests, webhook, twin), serve /v1/decision, /metrics,
    /healthz and /readyz on --port (9464). An elastic policy also
    decides each pool's desired replicas (config sections discovery and scaling; see
    example.yaml; against the twin, --policy P --twin URL needs no config)."""
    from policies.runtime import PolicyFileError, PolicyMismatchError, load_policy
    from policies.sidecar.config import SidecarConfigError, load_config, load_twin_config

    options = {
        "policy": policy,
        "host": host,
        "port": port,
        "interval_s": interval,
        "mapping": mapping,
        "shadow": shadow,
        "audit_log": audit_log,
        "token_file": token_file,
        "log_level": log_level,
    }
    overrides: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if fallback is not None:
        overrides["fallback"] = {"baseline": fallback}
    if state_dir is not None:
        overrides["state"] = {"directory": state_dir}
    try:
        if twin is not None and policy is not None:
            load_policy(policy)  # a bad policy is reported as such, not as a twin problem
        if engine:
            overrides["engines"] = [_key_values(e, "--engine") for e in engine]
        if fleet_capacity:
            overrides["fleet_capacity"] = _key_values(fleet_capacity, "--fleet-capacity")
        if counters:
            overrides["counters"] = [
                {"name": f"counters-{i}", "url": url} for i, url in enumerate(counters)
            ]
        if twin is None:
            settings = load_config(config, overrides)
        else:
            settings = load_twin_config(config, overrides, twin)
        if twin is not None and settings.audit_log is None and not (check or once):
            settings = settings.model_copy(update={"audit_log": TWIN_AUDIT_LOG})
        _configure_logging(settings.log_level)
        _serve(settings, once=once, check=check)
    except (SidecarConfigError, PolicyFileError, PolicyMismatchError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _key_values(text: str, option: str) -> dict[str, str]:
    from policies.sidecar.config import SidecarConfigError

    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SidecarConfigError(f"{option} {text!r}: expected comma-separated key=value pairs")
    return dict(pairs)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _serve(settings: Any, *, once: bool, check: bool) -> None:
    from policies.sidecar.loop import Sidecar
    from policies.sidecar.server import SidecarServer

    sidecar = Sidecar(settings)
    # What start-up built (spec, models, policy) lives as long as the process: the collector
    # need not scan it again during decisions.
    gc.freeze()
    if check:
        engines = len(sidecar.observer.engines)
        typer.echo(f"ok: {settings.policy} fits the config ({engines} engines)")
        sidecar.close()
        return
    if once:
        decision = sidecar.cycle()
        typer.echo(json.dumps(decision.to_dict(sidecar), indent=1))
        sidecar.close()
        return
    stop = threading.Event()
    loop = threading.Thread(target=sidecar.run, args=(stop,), name="sidecar-loop", daemon=True)
    try:
        server = SidecarServer(sidecar, settings.token(), loop_alive=loop.is_alive)
    except OSError as exc:
        sidecar.close()
        typer.echo(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", err=True)
        raise typer.Exit(2) from None
    signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Handlers only note the signal: taking a lock in one (stop.set()) deadlocks when a
        # second signal arrives while the first handler holds it.
        signal.signal(signum, lambda received, _: signals.append(received))
    loop.start()
    threading.Thread(target=server.serve_forever, name="sidecar-http", daemon=True).start()
    log = logging.getLogger("budgetpilot.sidecar")
    log.info(
        "serving on %s (GET /v1/decision, /metrics, /healthz, /readyz): %s every %g s%s%s",
        server.url,
        settings.policy,
        settings.interval_s,
        ", shadow mode" if settings.shadow else "",
        f", audit log {settings.audit_log.resolve()}" if settings.audit_log else ", no audit log",
    )
    while not signals:
        stop.wait(0.2)
    stop.set()
    server.shutdown()
    loop.join(timeout=settings.scrape.timeout_s + 5.0)
    sidecar.close()
    last = sidecar.last_decision
    log.info(
        "stopped after %d decisions (last: %s)%s",
        sidecar.decision_log.count,
        last.mode if last else "none",
        f"; state saved in {settings.state.directory}" if settings.state.directory else "",
    )
