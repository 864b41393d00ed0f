"""MLflow: tracking store selection, run parameters and metrics, model logging."""
