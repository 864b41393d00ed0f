"""MLflow, and only here: the tracking store, runs (nesting, parameters, metrics, tags, files, search), the model
(logging, loading with its hash checked), the Model Registry, and metrics that outlive a server outage."""
