"""Where the reference data (real traces, GPU profiles) lives.

The data is never part of the project: it is read from ``$BUDGETPILOT_DATA`` or, by default, from
``../shared/data`` beside the repository checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The example fleet files (``examples/fleets/NAME.yaml``).
EXAMPLE_FLEETS_DIR = REPO_ROOT / "examples" / "fleets"


def reference_data_dir() -> Path:
    """Return the reference-data folder (it may not exist: callers report that clearly)."""
    env = os.environ.get("BUDGETPILOT_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def require_reference_file(relative: str) -> Path:
    """Return the path of a reference file, or raise FileNotFoundError naming where it looked."""
    path = reference_data_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"reference data file {relative!r} not found at {path} "
            "(set BUDGETPILOT_DATA to the folder holding traces/ and profiles/)"
        )
    return path
