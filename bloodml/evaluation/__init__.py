"""Evaluation: pure functions on labels, probabilities and saliency maps (metrics with intervals, calibration,
Grad-CAM scores, plots); report.py writes one run's artefacts into a folder. No MLflow: the caller logs them."""
