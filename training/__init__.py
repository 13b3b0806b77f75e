"""budgetpilot: training."""
