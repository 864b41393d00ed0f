"""Per-epoch metrics that survive a tracking-server outage: kept in memory and retried, never dropped.

Training does not wait for the server; at the end of the run the buffer must drain (with retries) before the
run is finished, otherwise the run stops with a one-line message and the resume command (the epoch checkpoint
holds the same metrics, and resuming logs whatever MLflow is missing)."""

from __future__ import annotations

import time

import mlflow
from mlflow.entities import Metric

from ..errors import BloodmlError
from ..runtime import say


class MetricBuffer:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list[Metric] = []
        self.unreachable = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        self.flush(strict=False)

    def flush(self, strict: bool = True, attempts: int = 6, wait_s: float = 5.0) -> None:
        for attempt in range(attempts if strict else 1):
            if not self.pending:
                return
            try:
                mlflow.MlflowClient().log_batch(self.run_id, metrics=self.pending[:1000])
                del self.pending[:1000]
                if self.unreachable:
                    say("note: tracking server reachable again; buffered metrics logged")
                    self.unreachable = False
                if self.pending:
                    continue
                return
            except Exception as exc:  # connection refused, timeouts, 5xx: keep the metrics
                if not self.unreachable:
                    say(f"note: tracking server unreachable ({type(exc).__name__}); training continues, "
                        f"{len(self.pending)} metric values kept for later")
                self.unreachable = True
                if strict and attempt + 1 < attempts:
                    time.sleep(wait_s)
        if strict and self.pending:
            raise BloodmlError(f"the tracking server {mlflow.get_tracking_uri()} is unreachable; training finished and "
                               f"its epochs are checkpointed: run `bloodml train --resume {self.run_id}` once it is "
                               f"back.")
