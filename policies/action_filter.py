"""The action filter inside an exported policy's ONNX graph.

:class:`envs.action_filter.ActionRateLimit` written as ONNX nodes after the actor: the knobs in
force are gathered from the observation's ``knob.<name>`` features, each limited knob moves at
most ``max_step`` from them, the rest pass unchanged. Whoever runs the graph (the sidecar, the
benchmark) runs the filter the policy was trained with; nothing outside the graph changes.

``budgetpilot``'s export appends it for a checkpoint trained with ``env_kwargs.action_filter``;
:func:`filter_policy` appends it to an exported policy (to measure what a filter alone does to a
policy trained without one) and writes a new policy pair.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from envs.action_filter import ActionRateLimit
from envs.contract import ActionContract, ObservationContract
from policies.manifest import INPUT_NAME, OUTPUT_NAME
from policies.runtime import load_policy, manifest_path, read_manifest

#: Name of the actor's output before the filter.
RAW_ACTION = "raw_action"


def append_rate_limit(
    model: onnx.ModelProto,
    rate_limit: ActionRateLimit,
    observation: ObservationContract,
    action: ActionContract,
) -> onnx.ModelProto:
    """``model`` (observation -> action) with ``rate_limit`` applied to its action, checked.

    Raises
    ------
    ValueError
        The graph already carries a filter (a policy is filtered once, by what it trained with).
    """
    graph = model.graph
    if any(RAW_ACTION in node.output for node in graph.node):
        raise ValueError("the policy's graph already carries an action filter")
    for node in graph.node:
        node.output[:] = [RAW_ACTION if o == OUTPUT_NAME else o for o in node.output]
    limits = rate_limit.step_limits(action)
    limited = np.isfinite(limits)
    # A knob left alone takes the raw action (Where); its limit only needs to be finite.
    step = np.where(limited, limits, 2.0).astype(np.float32)
    constants = {
        "filter_features": np.asarray(
            ActionRateLimit.in_force_features(observation, action), np.int64
        ),
        "filter_limited": limited,
        "filter_step_low": -step,
        "filter_step_high": step,
        "filter_unit_low": np.float32(-1.0),
        "filter_unit_high": np.float32(1.0),
    }
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()
    )
    graph.node.extend(
        [
            helper.make_node("Gather", [INPUT_NAME, "filter_features"], ["in_force"], axis=1),
            helper.make_node("Sub", [RAW_ACTION, "in_force"], ["filter_change"]),
            helper.make_node("Min", ["filter_change", "filter_step_high"], ["filter_capped"]),
            helper.make_node("Max", ["filter_capped", "filter_step_low"], ["filter_step"]),
            helper.make_node("Add", ["in_force", "filter_step"], ["filter_moved"]),
            helper.make_node(
                "Clip", ["filter_moved", "filter_unit_low", "filter_unit_high"], ["filter_out"]
            ),
            helper.make_node("Where", ["filter_limited", "filter_out", RAW_ACTION], [OUTPUT_NAME]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def filter_policy(source: str | Path, out: str | Path, rate_limit: ActionRateLimit) -> Path:
    """Write ``out`` (``.onnx`` and its manifest): the policy ``source`` with ``rate_limit``
    appended to its graph, recorded in the manifest's ``provenance.export.action_filter``."""
    source, out = Path(source), Path(out)
    manifest = read_manifest(source)
    model = append_rate_limit(
        onnx.load(source),
        rate_limit,
        manifest.observation_contract,
        manifest.action_contract,
    )
    data = model.SerializeToString()
    export = dict(manifest.provenance.export) | {
        "action_filter": rate_limit.to_dict(),
        "filtered_from": source.name,
    }
    manifest = replace(
        manifest,
        onnx_sha256=hashlib.sha256(data).hexdigest(),
        provenance=replace(manifest.provenance, export=export),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    manifest_path(out).write_text(manifest.to_json())
    load_policy(out)  # the pair must load as a server would load it
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m policies.action_filter SOURCE.onnx OUT.onnx --max-step 0.1``."""
    parser = argparse.ArgumentParser(description=filter_policy.__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-step", type=float, required=True)
    args = parser.parse_args(argv)
    print(filter_policy(args.source, args.out, ActionRateLimit(args.max_step)))


if __name__ == "__main__":
    main()
