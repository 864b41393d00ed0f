"""Evaluation: pure metric functions on labels and probabilities (no MLflow, no files)."""
