"""budgetpilot: eval."""
