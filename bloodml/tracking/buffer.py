"""Per-epoch metrics that survive a tracking-server outage: kept in memory and retried, never dropped.

Training does not wait for the server; at the end of the run the buffer must drain (with retries) before the
run is finished, otherwise the run stops with a one-line message and the resume command (the epoch checkpoint
holds the same metrics, and resuming logs whatever MLflow is missing)."""

from __future__ import annotations

import time

from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException

from ..errors import BloodmlError
from ..runtime import say
from .runs import log_metric_batch, metric
from .store import tracking_uri

# What an unreachable or failing server raises (MLflow wraps HTTP errors after its own retries); anything else
# is a programming error and must not be relabelled as an outage.
UNREACHABLE = (MlflowException, RequestException, ConnectionError, TimeoutError)


class MetricBuffer:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list = []
        self.unreachable = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.pending += [metric(k, v, step) for k, v in metrics.items()]
        self.flush(strict=False)

    def flush(self, strict: bool = True, attempts: int = 6, wait_s: float = 5.0) -> None:
        for attempt in range(attempts if strict else 1):
            if not self.pending:
                return
            try:
                log_metric_batch(self.run_id, self.pending[:1000])
                del self.pending[:1000]
                if self.unreachable:
                    say("note: tracking server reachable again; buffered metrics logged")
                    self.unreachable = False
                if self.pending:
                    continue
                return
            except UNREACHABLE as exc:  # connection refused, timeouts, 5xx: keep the metrics
                if not self.unreachable:
                    say(f"note: tracking server unreachable ({type(exc).__name__}); training continues, "
                        f"{len(self.pending)} metric values kept for later")
                self.unreachable = True
                if strict and attempt + 1 < attempts:
                    time.sleep(wait_s)
        if strict and self.pending:
            raise BloodmlError(f"the tracking server {tracking_uri()} is unreachable; training finished and "
                               f"its epochs are checkpointed: run `bloodml train --resume {self.run_id}` once it is "
                               f"back.")
