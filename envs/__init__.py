"""budgetpilot environments: the fleet simulator and the Gymnasium environments on top of it.

Importing ``envs`` registers the environments (lazily: the simulator loads on ``make``). The
``envs:`` prefix makes gymnasium import it first, so that the ids work in any process, such as
RLlib's env runners, which never import ``envs`` (gymnasium 1.x loads no plugin entry points)::

    import gymnasium
    env = gymnasium.make("envs:budgetpilot/LLMFleet-v0", scenario="flash-crowd")
    env = gymnasium.make("envs:budgetpilot/LLMFleet-FlashCrowd-v0")
    env = gymnasium.make("envs:budgetpilot/LLMFleet-SlowRamp-v0")  # elastic: the pools scale

The slim install (the sidecar's) has no Gymnasium: there ``envs`` offers only its numpy-only
contracts (:mod:`envs.contract`) and registers nothing.
"""

from envs.scenario_names import ELASTIC_SCENARIO_NAMES, SCENARIO_NAMES

ENV_ID = "budgetpilot/LLMFleet-v0"
#: Prefix of an id that makes gymnasium import this package before looking the id up.
IMPORT_PREFIX = "envs:"
ENTRY_POINT = "envs.fleet_env:LLMFleetEnv"


def scenario_env_id(scenario: str) -> str:
    """The Gymnasium id of one scenario, e.g. ``budgetpilot/LLMFleet-FlashCrowd-v0``."""
    camel = "".join(part.capitalize() for part in scenario.split("-"))
    return f"budgetpilot/LLMFleet-{camel}-v0"


def _register_environments() -> None:
    try:
        from gymnasium.envs.registration import register
    except ModuleNotFoundError as exc:
        if exc.name != "gymnasium":
            raise
        return  # the slim install: nothing to register the environments with
    register(id=ENV_ID, entry_point=ENTRY_POINT)
    for name in SCENARIO_NAMES:
        # An elastic scenario's id makes the elastic environment (its pools scale).
        kwargs = {"scenario": name} | ({"elastic": True} if name in ELASTIC_SCENARIO_NAMES else {})
        register(id=scenario_env_id(name), entry_point=ENTRY_POINT, kwargs=kwargs)


_register_environments()

#: Every id registered here (the generic one first).
ENV_IDS: tuple[str, ...] = (ENV_ID, *(scenario_env_id(name) for name in SCENARIO_NAMES))
