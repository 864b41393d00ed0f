"""Optuna's shared storage, as tuning and distributed studies use it: opened with heartbeats (a dead worker's
running trial is failed by the others, its MLflow run marked FAILED, and the trial enqueued again), and URLs fit
to print (a password shown as ***)."""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.parse
import warnings

import optuna
from optuna.storages import RDBStorage

try:  # Optuna >= 4.9 names it after what it does (RetryFailedTrialCallback is deprecated there)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryStale
except ImportError:  # older Optuna
    from optuna.storages import RetryFailedTrialCallback as RetryStale

from ..errors import BloodmlError
from ..tracking.runs import find_runs, finish_run, set_tags

# How often a running trial proves its worker alive, and after how long without it the trial counts as lost.
# The ask/tell loops record heartbeats themselves (Optuna warns that they are meant for Study.optimize).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", module="optuna")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
HEARTBEAT_S = int(os.environ.get("BLOODML_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("BLOODML_GRACE_S", "40"))


def shown_storage(url: str) -> str:
    """A storage URL fit to print or log: a password in it replaced by *** (the user name stays)."""
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


def scrubbed(text: str, url: str) -> str:
    """``text`` (a driver's error, say) with the URL's password, if any, replaced by ***."""
    password = urllib.parse.urlsplit(url).password if "://" in url else None
    return text.replace(password, "***") if password else text


def open_storage(url: str, max_retry: int = 1) -> RDBStorage:
    """The storage at ``url``; a trial whose worker stopped beating is failed, its MLflow run (tagged
    optuna.study / optuna.trial) marked FAILED, and the trial enqueued again up to ``max_retry`` times."""
    def mark_mlflow_failed(study: optuna.Study, trial) -> None:
        runs = find_runs(f"tags.`optuna.study` = '{study.study_name}' and tags.`optuna.trial` = '{trial.number}' "
                         f"and attributes.status = 'RUNNING'")
        for run in runs:
            set_tags({"bloodml.state": "FAILED (worker lost)"}, run.info.run_id)
            finish_run(run.info.run_id, "FAILED")
        RetryStale(max_retry=max_retry)(study, trial)

    last: Exception | None = None
    for attempt in range(6):  # workers opening a new database together race to create its tables: retry
        try:
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=mark_mlflow_failed)
        except Exception as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1) + random.random())
    reason = scrubbed(str(last).splitlines()[0][:160] if str(last) else type(last).__name__, url)
    raise BloodmlError(f"Optuna storage '{shown_storage(url)}' cannot be opened ({reason}); pass storage="
                       f"sqlite:///optuna.db or a reachable postgresql://user@host/db (password in PGPASSFILE or "
                       f"PGPASSWORD, not in the URL).")


class Heartbeat:
    """Records a trial's heartbeat from a thread, so dead workers' trials are detected by the others."""

    def __init__(self, storage: RDBStorage, trial_id: int):
        self.storage, self.trial_id, self.stop = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(HEARTBEAT_S):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
