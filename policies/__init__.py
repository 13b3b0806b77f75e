"""budgetpilot: policies."""
