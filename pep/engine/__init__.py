"""Training, inference and evaluation drivers (the loops around the model)."""
