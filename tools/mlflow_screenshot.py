"""Screenshots of bloodml in the MLflow UI, for the documentation (headless Chromium through Playwright).

    pip install -e '.[docs]'
    python tools/mlflow_screenshot.py --tracking-uri sqlite:///mlflow.db --out-dir docs/images

Starts `mlflow ui` on loopback and saves three PNGs:
  run_page.png        the newest training run (or --run ID): its datasets, tags, description and metrics;
  study_compare.png   the configuration runs of the newest study (or --study NAME) side by side;
  registry.png        the registered model holding the champion alias (or --model NAME) and its versions.
Then it stops the server. Chromium: Playwright's own (`playwright install chromium`) or the system's
(Debian: apt-get install chromium), found on PATH or given with --browser.
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
from pathlib import Path

import mlflow
from PIL import Image

WIDTH, HEIGHT = 1400, 1000


def newest_training_run(run_id: str | None) -> tuple[str, str, str]:
    """(experiment id, run id, run name) of the given run, or of the newest bloodml training run."""
    if run_id:
        run = mlflow.get_run(run_id)
        return run.info.experiment_id, run.info.run_id, run.info.run_name
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`bloodml.kind` = 'train'",
                              output_format="list", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit("no bloodml training run found; run `bloodml train` first")
    return runs[0].info.experiment_id, runs[0].info.run_id, runs[0].info.run_name


def configuration_runs(study: str | None) -> tuple[str, list[str]]:
    """(experiment id, run ids) of the configuration runs of the newest study run (or of study ``study``)."""
    filter_string = "tags.`bloodml.task` = 'study-configuration'"
    if study:
        filter_string += f" and tags.`bloodml.study` = '{study}'"
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=filter_string, output_format="list",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit("no study configuration runs found; run `bloodml study` first")
    parent = runs[0].data.tags["mlflow.parentRunId"]
    chosen = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    return chosen[0].info.experiment_id, [r.info.run_id for r in chosen]


def champion_model(name: str | None) -> str:
    """The registered model named, or the newest one with a version aliased champion."""
    client = mlflow.MlflowClient()
    if name:
        client.get_registered_model(name)
        return name
    models = sorted(client.search_registered_models(), key=lambda m: m.last_updated_timestamp or 0, reverse=True)
    for model in models:
        if "champion" in (model.aliases or {}):
            return model.name
    raise SystemExit("no registered model with a champion alias; run `bloodml tune` or `bloodml register` first")


def start_ui(tracking_uri: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(90):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"mlflow ui stopped (exit {server.returncode}); is port {port} free?")
            time.sleep(1)
    server.terminate()
    raise SystemExit(f"mlflow ui did not answer on port {port} within 90 s")


def close_side_panels(page) -> None:
    """MLflow 3 opens its assistant panel beside every page; close it so the page has the width."""
    assistant = page.locator("text=MLflow Assistant")
    close = page.locator('button[aria-label="Close"]')
    if assistant.count() and assistant.first.is_visible() and close.count() and close.first.is_visible():
        close.first.click()
        page.wait_for_timeout(500)


def shoot(page, url: str, ready: str, out: Path, expand: str | None = None, height: int = HEIGHT) -> None:
    """Open ``url``, wait until the text ``ready`` shows, click ``expand`` (an aria-label) when present, and save
    the top ``height`` pixels as a small palette PNG."""
    page.goto(url)
    page.wait_for_selector(f"text={ready}", timeout=60_000)  # a text of the page's own content, not the sidebar's
    page.wait_for_timeout(2_000)  # charts and tables fill in after the first paint
    close_side_panels(page)
    if expand and page.locator(f'[aria-label="{expand}"]').count():
        page.locator(f'[aria-label="{expand}"]').first.click()
        page.wait_for_timeout(500)
    page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": WIDTH, "height": height})
    Image.open(out).convert("RGB").quantize(colors=128).save(out, optimize=True)
    print(f"{out} ({out.stat().st_size // 1024} KiB): {url}")


def browser_path(given: str | None) -> str | None:
    """The Chromium to drive: the one given, else the system's on PATH, else None (Playwright's own)."""
    if given:
        return given
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out-dir", default="docs/images")
    parser.add_argument("--run", default=None, help="training run id (default: the newest)")
    parser.add_argument("--study", default=None, help="study name (default: the newest)")
    parser.add_argument("--model", default=None, help="registered model (default: the newest with @champion)")
    parser.add_argument("--browser", default=None, help="Chromium executable (default: on PATH, else Playwright's)")
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--only-run", default=None, metavar="PNG",
                        help="save only the run page of --run, under this file name (e.g. refit_run.png)")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("Playwright is missing: pip install -e '.[docs]'")
    mlflow.set_tracking_uri(args.tracking_uri)
    experiment, run_id, run_name = newest_training_run(args.run)
    study_experiment, study_runs = configuration_runs(args.study) if not args.only_run else ("", [])
    model = champion_model(args.model) if not args.only_run else ""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}/#"
    compare = urllib.parse.urlencode({"runs": json.dumps(study_runs), "experiments": json.dumps([study_experiment])})
    server = start_ui(args.tracking_uri, args.port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path(args.browser), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            shoot(page, f"{base}/experiments/{experiment}/runs/{run_id}", run_name,
                  out / (args.only_run or "run_page.png"), expand="Expand description")
            if not args.only_run:
                shoot(page, f"{base}/compare-runs?{compare}", "Parameters", out / "study_compare.png")
                shoot(page, f"{base}/models/{urllib.parse.quote(model)}", "champion", out / "registry.png",
                      height=480)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
