"""The controller sidecar: an exported policy governing a real fleet's knobs by its error budgets.

Every interval the sidecar scrapes the engines' Prometheus metrics (and optionally a router's
budgetpilot counters), turns them into burn rates with the SLO engine and into the observation
vector of the policy's manifest contract, asks the policy (onnxruntime) for knob values, passes
them through guardrails and hands them to actuators (Kubernetes manifests for the router, a
webhook, the engine twin's control API). It serves its decisions and its own health over HTTP.

Modules: :mod:`.config` (settings), :mod:`.scrape` (concurrent HTTP GET), :mod:`.parse`
(selective exposition parsing), :mod:`.observe` (metrics -> observation), :mod:`.guardrails`,
:mod:`.actuators`, :mod:`.telemetry` (the sidecar's own /metrics), :mod:`.loop` (the
:class:`~policies.sidecar.loop.Sidecar`), :mod:`.server` (HTTP), :mod:`.cli`, :mod:`.perf`.

Nothing here imports torch, ray, stable-baselines3, numba or the simulator.
"""
