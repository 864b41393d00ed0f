"""Data layer: read samples, decode masks, find copies, split, audit, preload, and the input specification (what
the network sees). Knows nothing of MLflow."""
