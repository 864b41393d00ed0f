"""`make demo`: efficientnet_lite0 trained on raw images and on expert-masked cells, compared side by side; the
better of the two on its validation split (never the test split) is registered as ``models:/bloodml-demo@champion``,
where the guides start from."""

from __future__ import annotations

import click

from .config import build_config
from .errors import BloodmlError
from .runtime import say
from .tracking.registry import register
from .tracking.store import ui_hint

MODEL_NAME = "bloodml-demo"

ROWS = (("test_accuracy", "test accuracy"), ("test_balanced_accuracy", "test balanced accuracy"),
        ("test_macro_f1", "test macro-F1"), ("test_majority_rate", "majority-class rate"),
        ("best_epoch", "best epoch"), ("train_seconds", "wall time (s)"))


def comparison_table(results: dict) -> list[str]:
    names = list(results)
    lines = [f"{'':26}" + "".join(f"{n:>16}" for n in names)]
    for key, label in ROWS:
        fmt = ">16.0f" if key == "best_epoch" else (">16.1f" if key == "train_seconds" else ">16.3f")
        lines.append(f"{label:26}" + "".join(f"{results[n].metrics[key]:{fmt}}" for n in names))
    lines.append(f"{'MLflow run':26}" + "".join(f"{results[n].run_id[:12]:>16}" for n in names))
    return lines


@click.command()
@click.option("--data", default="wbc-zheng2018", show_default=True,
              help="a folder, or a dataset name: its development copy in ../shared/data, else the cache, else fetched")
@click.option("--config", "config_path", default=None, help="optional experiments/*.yaml for the data layout")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--epochs", default=20, show_default=True)
def main(data, config_path, backbone, epochs):
    from .train import run_training

    try:
        results = {}
        for masks in ("none", "cell"):
            say(f"=== {backbone}, masks={masks} ===")
            config = build_config(config_path, {"data": data, "backbone": backbone, "masks": masks,
                                                "epochs": epochs, "experiment": "bloodml-demo"})
            results[f"masks={masks}"] = run_training(config)
    except BloodmlError as error:
        raise SystemExit(f"error: {error}")
    say("")
    n_test = int(next(iter(results.values())).metrics["n_test"])
    say(f"{backbone} on {data}: one split with {n_test} test images, so one image moves accuracy by "
        f"{100 / n_test:.1f} points; read small differences as noise")
    for line in comparison_table(results):
        say(line)
    chosen = max(results, key=lambda n: results[n].metrics["val_final_macro_f1"])
    try:
        version = register(results[chosen].run_id, MODEL_NAME, alias="champion")
    except BloodmlError as error:
        raise SystemExit(f"error: {error}")
    say(f"registered {chosen} (the better validation macro-F1, {results[chosen].metrics['val_final_macro_f1']:.3f}) "
        f"as models:/{MODEL_NAME}@champion (version {version}); next: docs/guides/serving.md")
    say(f"compare them in the MLflow UI: {ui_hint(next(iter(results.values())).tracking_uri)}")


if __name__ == "__main__":
    main()
