"""The controller sidecar: an exported policy governing a real fleet's knobs by its error budgets.

Every interval the sidecar scrapes the engines' Prometheus metrics (and optionally a router's
budgetpilot counters), turns them into burn rates with the SLO engine and into the observation
vector of the policy's manifest contract, asks the policy (onnxruntime) for knob values, passes
them through guardrails and hands them to actuators (Kubernetes manifests for the router and for
the pools' Deployments, a webhook, the engine twin's control API). It serves its decisions and
its own health over HTTP.

An elastic policy (its manifest's observation contract has replica knobs) also scales the
pools (under contract v3, each pool by its role's knob): the engines then come from a discovery
listing with each replica's lifecycle (provisioning, serving, draining: the engine twin's
``/engines`` or Kubernetes Pods), and the
sidecar decides the desired replicas of each pool within the ``scaling`` bounds, published as
the ``budgetpilot_sidecar_desired_replicas`` gauge (for KEDA or an HPA on external metrics), as
``Deployment`` scale manifests, in the webhook's JSON and to the twin's ``/v1/replicas``.

Modules: :mod:`.config` (settings), :mod:`.scrape` (concurrent HTTP GET), :mod:`.parse`
(selective exposition parsing), :mod:`.discovery` (engines and their lifecycle),
:mod:`.observe` (metrics -> observation), :mod:`.guardrails`,
:mod:`.actuators`, :mod:`.telemetry` (the sidecar's own /metrics), :mod:`.loop` (the
:class:`~policies.sidecar.loop.Sidecar`), :mod:`.server` (HTTP), :mod:`.cli`. Its benchmark is
:mod:`eval.perf_sidecar` (it builds observations through the simulated environment).

Nothing here imports torch, ray, stable-baselines3, numba or the simulator.
"""
