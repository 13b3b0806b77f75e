"""The Kubernetes permissions the sidecar's pod needs, and whether its Roles grant them.

In a cluster (``deploy/kubernetes``) the actuators write manifests that the pod's applier
container applies with the pod's ServiceAccount: the router's objects by server-side apply
(``patch`` of the named objects, and ``create``, as Kubernetes authorizes an apply that creates
an object and as RBAC cannot limit to names), the pools' sizes by ``kubectl scale`` (``get`` of
the named Deployments and ``patch`` of their ``scale`` subresource). Pod discovery through the
API server lists the pods of its namespace.

The sidecar learns what it is granted from Role manifests named in its config (``rbac:``, the
very files the cluster was given, mounted beside the config) rather than by asking the API
server (a SelfSubjectAccessReview): the check then runs before anything is scraped, offline and
the same every time, and a config whose actuators would be forbidden is refused at start,
naming the object, instead of failing at its first scale-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policies.sidecar.actuators import FileActuator
from policies.sidecar.config import SidecarConfig, SidecarConfigError

_POD_LISTING = re.compile(r"/api/v1/namespaces/([^/]+)/pods/?$")


@dataclass(frozen=True, order=True)
class Permission:
    """One verb on one resource (``name``: one object; empty: any, as for create and list)."""

    namespace: str
    group: str
    resource: str
    verb: str
    name: str = ""

    def describe(self) -> str:
        """``patch deployments/scale of apps/vllm-strong in namespace llm`` and the like."""
        target = f" of {self.group or 'core'}/{self.name}" if self.name else ""
        return f"{self.verb} {self.resource}{target} in namespace {self.namespace}"


def required_permissions(config: SidecarConfig) -> set[Permission]:
    """What the configured actuators and discovery do through the Kubernetes API."""
    required: set[Permission] = set()
    if config.actuators.scale is not None:
        for scaling in config.scaling.values():
            namespace, name = scaling.namespace, scaling.deployment
            required.add(Permission(namespace, "apps", "deployments", "get", name))
            required.add(Permission(namespace, "apps", "deployments/scale", "patch", name))
    if config.actuators.file is not None:
        knobs = {"cheap_tier_share": 0.0, "shed_priority_below": 0.0}
        for manifest in FileActuator(config.actuators.file).manifests(knobs):
            group = manifest["apiVersion"].rpartition("/")[0]
            # The plural of every kind written here is its lower-case name plus "s".
            resource = manifest["kind"].lower() + "s"
            namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            required.add(Permission(namespace, group, resource, "patch", name))
            required.add(Permission(namespace, group, resource, "create"))
    discovery = config.discovery
    if discovery is not None and discovery.pods is not None and discovery.token_file is not None:
        listing = _POD_LISTING.search(discovery.url.split("?")[0])
        namespace = listing.group(1) if listing else "*"
        required.add(Permission(namespace, "", "pods", "list"))
    return required


def read_roles(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The ``Role`` documents of these manifest files (other kinds are skipped).

    Raises
    ------
    SidecarConfigError
        A file is unreadable or not YAML, or a Role has no namespace (named).
    """
    roles = []
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise SidecarConfigError(f"rbac: cannot read {path}: {exc}") from None
        for document in documents:
            if not isinstance(document, Mapping) or document.get("kind") != "Role":
                continue
            if not document.get("metadata", {}).get("namespace"):
                name = document.get("metadata", {}).get("name")
                raise SidecarConfigError(f"rbac: {path}: Role {name!r} has no metadata.namespace")
            roles.append(dict(document))
    return roles


def granted_permissions(roles: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every permission the roles' rules spell out (a ``*`` stays a ``*``)."""
    granted = set()
    for role in roles:
        namespace = role["metadata"]["namespace"]
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        for name in rule.get("resourceNames") or [""]:
                            granted.add(Permission(namespace, group, resource, verb, name))
    return granted


def allows(granted: Iterable[Permission], wanted: Permission) -> bool:
    """Whether a granted permission covers ``wanted`` (wildcards; no name: every object)."""
    return any(
        g.namespace == wanted.namespace
        and g.group in (wanted.group, "*")
        and g.resource in (wanted.resource, "*")
        and g.verb in (wanted.verb, "*")
        and g.name in (wanted.name, "")
        for g in granted
    )


def check_rbac(config: SidecarConfig) -> None:
    """Refuse a config whose actuators or discovery need what its ``rbac`` Roles do not grant.

    Raises
    ------
    SidecarConfigError
        Naming each missing permission (so each Deployment or object it would touch).
    """
    if not config.rbac:
        return
    granted = granted_permissions(read_roles(config.rbac))
    missing = sorted(p for p in required_permissions(config) if not allows(granted, p))
    if missing:
        files = ", ".join(str(path) for path in config.rbac)
        lines = "\n".join(f"  - {p.describe()}" for p in missing)
        raise SidecarConfigError(f"rbac: the Roles of {files} do not grant:\n{lines}")
