"""Scenario names, importable without the simulator (for environment registration)."""

#: Every scenario of :data:`envs.scenarios.SCENARIOS`, in suite order.
SCENARIO_NAMES: tuple[str, ...] = (
    "steady",
    "diurnal",
    "flash-crowd",
    "long-context-surge",
    "heavy-prompts",
    "replica-failure",
    "noisy-tenant",
    "model-rollout",
    "trace-conv",
    "trace-code",
    "mixed",
    "elastic-diurnal",
    "slow-ramp",
    "short-flash-crowd",
    "spot-interruptions",
)
#: Scenarios never used by a training preset (they measure generalisation).
HELD_OUT_SCENARIO_NAMES: tuple[str, ...] = ("trace-conv", "trace-code", "mixed")
#: Scenarios where scaling the pools matters (``LLMFleetEnv(elastic=True)``); only elastic
#: training presets draw them.
ELASTIC_SCENARIO_NAMES: tuple[str, ...] = (
    "elastic-diurnal",
    "slow-ramp",
    "short-flash-crowd",
    "spot-interruptions",
)
