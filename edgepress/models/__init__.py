"""Model loading and the model zoo."""
