"""budgetpilot: slo."""
