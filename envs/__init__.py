"""budgetpilot: envs."""
