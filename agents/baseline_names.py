"""Baseline names, importable without numpy or the simulator (for command-line help)."""

#: Every baseline of :data:`agents.baselines.BASELINES`, in its order.
BASELINE_NAMES: tuple[str, ...] = (
    "vllm-defaults",
    "static",
    "reactive",
    "sre-policy",
    "pid",
    "hpa",
    "budget-autoscaler",
    "wva",
    "kpa",
)
