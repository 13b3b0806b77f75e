"""budgetpilot: agents."""
