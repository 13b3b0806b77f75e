"""Actuators: where published knob values go.

* :class:`FileActuator` writes Kubernetes manifests for an llm-d / Gateway API Inference
  Extension router, atomically (temporary file, fsync, ``os.replace``), only when they change:
  an ``InferenceModelRewrite`` splitting the served model between the strong and the cheap model
  by ``cheap_tier_share``, an ``InferenceObjective`` per objective whose priority drops to the
  sheddable priority while ``shed_priority_below`` sheds it, and a ConfigMap with every knob
  (the knobs those resources cannot express: offload, admission, context, batch, weights).
* :class:`ScaleActuator` writes an elastic policy's desired replicas, one manifest per pool in
  its directory, ``<namespace>.<deployment>.scale.yaml`` (the pool's ``scaling`` entry): the
  pool's ``Deployment`` with only ``spec.replicas``, atomically and only when it changes. Apply
  it with ``kubectl patch deployment <deployment> -n <namespace> --type merge --patch-file
  <file>``, or ``kubectl apply --server-side --field-manager budgetpilot-sidecar
  --force-conflicts -f <file>`` (server-side apply takes ownership of ``spec.replicas`` only;
  a client-side ``kubectl apply`` of this partial manifest would prune the Deployment's other
  fields). It works alone or beside the router manifests.
* :class:`WebhookActuator` POSTs each decision as JSON (with ``desired_replicas`` per pool for
  an elastic policy).
* :class:`TwinActuator` sets the engine twin's knobs (``POST /v1/knobs``, values by contract
  knob name) and an elastic twin's desired replicas (``POST /v1/replicas``).

Desired replicas are also published as the gauge ``budgetpilot_sidecar_desired_replicas{pool,
deployment}`` of the sidecar's ``/metrics`` (see :mod:`policies.sidecar.telemetry`), for KEDA or
an HPA on external metrics.

An actuator raises :class:`ActuationError` when it fails; the sidecar records it and goes on.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from policies.sidecar.config import (
    ActuatorSettings,
    FileActuatorSettings,
    ScaleActuatorSettings,
    ScalingSettings,
    TwinActuatorSettings,
    WebhookActuatorSettings,
)
from policies.sidecar.guardrails import is_replica_knob

REWRITE_API = "inference.networking.x-k8s.io/v1alpha2"
POOL_GROUP = "inference.networking.k8s.io"
#: Weights of the rewrite's targets sum to this (the API allows integers 1..1000000).
WEIGHT_SCALE = 1000


class ActuationError(RuntimeError):
    """An actuator could not apply a decision."""


class Actuator(Protocol):
    """Applies a decision: ``knobs`` are the published values by knob name, ``payload`` is the
    JSON form of the whole decision (``payload["desired_replicas"]``: the desired replicas per
    pool of an elastic policy, empty otherwise)."""

    name: str

    def apply(self, knobs: Mapping[str, float], payload: Mapping[str, Any]) -> None: ...


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path``'s content with ``text`` in one step (readers see the old or the new
    file, never a partial one). Returns False when the content was already ``text``."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def k8s_name(text: str) -> str:
    """A valid Kubernetes object name (RFC 1123 subdomain) derived from ``text``."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    return name[:253] or "budgetpilot"


def scale_manifest(scaling: ScalingSettings, replicas: int) -> dict[str, Any]:
    """The scale patch of a pool's Deployment: ``spec.replicas`` and nothing else."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": scaling.deployment, "namespace": scaling.namespace},
        "spec": {"replicas": int(replicas)},
    }


class FileActuator:
    """Kubernetes manifests for the router (see the module docstring).

    Parameters
    ----------
    settings:
        Where and what to write.
    """

    name = "file"

    def __init__(self, settings: FileActuatorSettings) -> None:
        self.settings = settings

    def manifests(self, knobs: Mapping[str, float]) -> list[dict[str, Any]]:
        """The resources for these knob values."""
        s = self.settings
        return [
            self._rewrite(knobs["cheap_tier_share"]),
            *(
                self._objective(name, priority, knobs["shed_priority_below"])
                for name, priority in s.objectives.items()
            ),
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self._metadata(f"{s.name_prefix}-knobs"),
                "data": {name: repr(float(value)) for name, value in knobs.items()},
            },
        ]

    def _metadata(self, name: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/managed-by": "budgetpilot-sidecar"}
        return {"name": k8s_name(name), "namespace": self.settings.namespace, "labels": labels}

    def _rewrite(self, cheap_share: float) -> dict[str, Any]:
        s = self.settings
        cheap = round(cheap_share * WEIGHT_SCALE)
        weights = {s.strong_model: WEIGHT_SCALE - cheap, s.cheap_model: cheap}
        # Weights are 1..1000000, set on all targets or none: a lone target has no weight.
        targets: list[dict[str, Any]] = [
            {"modelRewrite": model, "weight": weight} for model, weight in weights.items() if weight
        ]
        if len(targets) == 1:
            del targets[0]["weight"]
        return {
            "apiVersion": REWRITE_API,
            "kind": "InferenceModelRewrite",
            "metadata": self._metadata(f"{s.name_prefix}-{s.model}-tiers"),
            "spec": {
                "poolRef": {"group": POOL_GROUP, "name": s.pool},
                "rules": [
                    {
                        "matches": [{"model": {"type": "Exact", "value": s.model}}],
                        "targets": targets,
                    }
                ],
            },
        }

    def _objective(self, name: str, priority: int, shed_below: float) -> dict[str, Any]:
        s = self.settings
        shed = priority < shed_below
        return {
            "apiVersion": REWRITE_API,
            "kind": "InferenceObjective",
            "metadata": self._metadata(name),
            "spec": {
                "priority": s.sheddable_priority if shed else priority,
                "poolRef": {"group": POOL_GROUP, "name": s.pool},
            },
        }

    def apply(self, knobs: Mapping[str, float], payload: Mapping[str, Any]) -> None:
        text = yaml.safe_dump_all(self.manifests(knobs), sort_keys=False)
        _write(self.settings.path, text)


class ScaleActuator:
    """Deployment scale manifests of the desired replicas (see the module docstring).

    Parameters
    ----------
    settings:
        The directory of the manifests.
    scaling:
        Per pool, its Deployment.
    """

    name = "scale"

    def __init__(
        self, settings: ScaleActuatorSettings, scaling: Mapping[str, ScalingSettings]
    ) -> None:
        self.directory = settings.directory
        self.scaling = dict(scaling)

    def path(self, pool: str) -> Path:
        """The scale manifest of ``pool``."""
        s = self.scaling[pool]
        return self.directory / f"{k8s_name(s.namespace)}.{k8s_name(s.deployment)}.scale.yaml"

    def apply(self, knobs: Mapping[str, float], payload: Mapping[str, Any]) -> None:
        for pool, replicas in (payload.get("desired_replicas") or {}).items():
            manifest = scale_manifest(self.scaling[pool], replicas)
            _write(self.path(pool), yaml.safe_dump(manifest, sort_keys=False))


def _write(path: Path, text: str) -> None:
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise ActuationError(f"cannot write {path}: {exc}") from None


def _post_json(url: str, body: Mapping[str, Any], timeout_s: float, headers: Mapping) -> bytes:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ActuationError(f"POST {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ActuationError(f"POST {url}: {exc}") from None


class WebhookActuator:
    """POSTs the whole decision (knobs, mode, reason, interventions) as JSON."""

    name = "webhook"

    def __init__(self, settings: WebhookActuatorSettings) -> None:
        self.settings = settings

    def apply(self, knobs: Mapping[str, float], payload: Mapping[str, Any]) -> None:
        s = self.settings
        _post_json(s.url, payload, s.timeout_s, s.headers)


class TwinActuator:
    """Sets the engine twin's knobs (the replica knobs aside) and, for an elastic policy, its
    desired replicas, through its control API."""

    name = "twin"

    def __init__(self, settings: TwinActuatorSettings) -> None:
        self.settings = settings
        base = settings.url.rstrip("/")
        self.url = base + "/v1/knobs"
        self.replicas_url = base + "/v1/replicas"

    def apply(self, knobs: Mapping[str, float], payload: Mapping[str, Any]) -> None:
        serving = {name: value for name, value in knobs.items() if not is_replica_knob(name)}
        self._post(self.url, serving)
        desired = payload.get("desired_replicas")
        if desired:
            self._post(self.replicas_url, {"desired": dict(desired)})

    def _post(self, url: str, body: Mapping[str, Any]) -> None:
        answer = _post_json(url, body, self.settings.timeout_s, {})
        try:
            json.loads(answer or b"{}")
        except ValueError:
            raise ActuationError(f"POST {url}: the answer is not JSON") from None


def build_actuators(
    settings: ActuatorSettings, scaling: Mapping[str, ScalingSettings] | None = None
) -> list[Actuator]:
    """The actuators the settings configure, in a fixed order (file, scale, webhook, twin);
    ``scaling`` names the pools' Deployments (the scale manifests)."""
    actuators: list[Actuator] = []
    if settings.file is not None:
        actuators.append(FileActuator(settings.file))
    if settings.scale is not None:
        actuators.append(ScaleActuator(settings.scale, scaling or {}))
    if settings.webhook is not None:
        actuators.append(WebhookActuator(settings.webhook))
    if settings.twin is not None:
        actuators.append(TwinActuator(settings.twin))
    return actuators
