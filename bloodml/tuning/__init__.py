"""Optuna tuning: search spaces, the study loop (one or many workers), champion promotion in the registry."""
