"""Data layer: read samples, decode masks, group duplicates, split, audit, preload. Knows nothing of MLflow."""
