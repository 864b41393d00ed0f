"""A shipped study run three ways, each on a fresh experiment: one process, one worker on the shared storage, and
two workers on the shared storage (one thread each, as two machines' worth of cores are not here).

    eval "$(tools/services.sh start /tmp/bloodml-services)"   # PostgreSQL + an authenticated mlflow server
    python benchmarks/study_workers.py [--study experiments/lymphocytosis_study_refit.yaml]

Prints (and writes to --out) the wall times, the ratio one worker / two workers, and the shared storage's overhead
per cell: (one worker - one process) / cells. The storage defaults to $BLOODML_TEST_PG_URL, the tracking server to
$BLOODML_TEST_MLFLOW_URI (both set by tools/services.sh); the feature cache is warmed by a first pass that is not
timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path


def run(commands: list[list[str]], env: dict) -> float:
    started = time.perf_counter()
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{' '.join(process.args)} failed:\n{err[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="experiments/lymphocytosis_study_refit.yaml")
    parser.add_argument("--storage", default=os.environ.get("BLOODML_TEST_PG_URL", ""))
    parser.add_argument("--tracking", default=os.environ.get("BLOODML_TEST_MLFLOW_URI", ""))
    parser.add_argument("--out", default="benchmarks/results/study_workers.json")
    args = parser.parse_args()
    if not args.storage or not args.tracking:
        raise SystemExit("start the services first: eval \"$(tools/services.sh start /tmp/bloodml-services)\"")
    env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking}
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    tag = uuid.uuid4().hex[:6]
    base = [sys.executable, "-m", "bloodml.cli", "study", "--config", args.study]

    def study(mode: str, *extra: str) -> list[str]:
        return base + ["--out", f"/tmp/bench-{tag}-{mode}", "--set", f"experiment=bench-{tag}-{mode}", *extra]

    run([study("warm")], env)  # fills the feature cache: every timed pass reads the same features
    one_process = run([study("single")], env)
    one_worker = run([study("worker1", "--storage", args.storage, "--worker")], env)
    two_workers = run([study("worker2", "--storage", args.storage, "--worker", "--set", "threads=1"),
                       study("worker2", "--storage", args.storage, "--worker", "--set", "threads=1")], env)
    report = Path(f"/tmp/bench-{tag}-single/per_fold.csv")
    cells = sum(1 for _ in report.open()) - 1
    result = {"study": args.study, "cells": cells, "cores": os.cpu_count(), "machine": platform.processor() or
              platform.machine(), "one_process_s": round(one_process, 1), "one_worker_s": round(one_worker, 1),
              "two_workers_s": round(two_workers, 1), "ratio_one_over_two_workers": round(one_worker / two_workers, 2),
              "storage_overhead_per_cell_s": round((one_worker - one_process) / cells, 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
