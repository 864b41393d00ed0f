"""Screenshot the MLflow UI comparing a study's configuration runs side by side (headless Chromium).

    python tools/mlflow_screenshot.py --tracking-uri sqlite:///mlflow.db --out study_compare.png [--study NAME]

Starts `mlflow ui` on loopback, opens the compare page of the configuration runs of the newest study (or the one
named), saves a PNG, and stops the server. Needs Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import mlflow


def configuration_runs(study: str | None) -> tuple[str, list[str]]:
    filter_string = "tags.`bloodml.task` = 'study-configuration'"
    if study:
        filter_string += f" and tags.`bloodml.study` = '{study}'"
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit("no study configuration runs found; run `bloodml study` first")
    newest = runs[0].data.tags["bloodml.study"]
    chosen = [r for r in runs if r.data.tags["bloodml.study"] == newest]
    parent = chosen[0].data.tags["mlflow.parentRunId"]
    chosen = [r for r in chosen if r.data.tags["mlflow.parentRunId"] == parent]
    return chosen[0].info.experiment_id, [r.info.run_id for r in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--study", default=None)
    parser.add_argument("--out", default="study_compare.png")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        raise SystemExit("Chromium not found; apt-get install chromium")
    mlflow.set_tracking_uri(args.tracking_uri)
    experiment, run_ids = configuration_runs(args.study)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(1)
        query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment])})
        url = f"{base}/#/compare-runs?{query}"
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1800,1400", "--virtual-time-budget=20000", f"--screenshot={args.out}", url],
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{len(run_ids)} configuration runs compared: {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
