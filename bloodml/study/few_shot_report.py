"""The few_shot study's report: the learning curve (mean and 95% interval over draws per k, selection and
configuration) as a table and a plot, the paired verdicts (suggested vs random at equal k; each k vs k = 0; the
configurations' questions at each k), the pool each draw drew from, and the CSVs behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .spec import StudySpec  # noqa: E402
from .statistics import Comparison, compare, mean_ci  # noqa: E402
from .report import short_name  # noqa: E402


@dataclass
class FewShotResult:
    spec: StudySpec
    table: pd.DataFrame  # one row per configuration x draw x k x selection: scores on that draw's test part
    pools: pd.DataFrame  # per draw: pool and test sizes, pool cells per class
    parent_run_id: str
    seconds: float
    comparisons: list[Comparison] = field(default_factory=list)
    report: Path | None = None


def scores_at(table: pd.DataFrame, configuration: str, k: int, selection: str, metric: str) -> np.ndarray:
    """Per-draw scores (in draw order) of one point of the curve; k = 0 is shared by every selection."""
    rows = table.loc[(table["configuration"] == configuration) & (table["k"] == k)
                     & ((table["selection"] == selection) | (k == 0))].sort_values("draw")
    return rows[metric].to_numpy(dtype=float)


def comparisons(result: FewShotResult) -> list[Comparison]:
    spec, table, metric = result.spec, result.table, result.spec.metric
    ratio = float((table["n_test"] / table["n_train"]).mean())  # Nadeau-Bengio: the draws overlap
    shots = [k for k in spec.shots if k > 0]
    found: list[Comparison] = []
    for configuration in spec.configurations:
        name = configuration.name
        if {"random", "suggested"} <= set(spec.selections):
            for k in shots:
                found.append(compare(f"{name}: suggested vs random selection at k={k}", f"{name}@k{k}-random",
                                     f"{name}@k{k}-suggested", metric, scores_at(table, name, k, "random", metric),
                                     scores_at(table, name, k, "suggested", metric), ratio, f"random k={k}",
                                     f"suggested k={k}"))
        for selection in spec.selections:
            for k in shots:
                found.append(compare(f"{name}: k={k} ({selection}) vs k=0", f"{name}@k0", f"{name}@k{k}-{selection}",
                                     metric, scores_at(table, name, 0, selection, metric),
                                     scores_at(table, name, k, selection, metric), ratio, "k=0",
                                     f"k={k} {selection}"))
    for question in spec.questions:
        for a, b in question.pairs:
            for k, selection in [(k, s) for s in spec.selections for k in shots]:
                found.append(compare(f"{question.name} (k={k}, {selection})", f"{a}@k{k}", f"{b}@k{k}", metric,
                                     scores_at(table, a, k, selection, metric), scores_at(table, b, k, selection,
                                                                                            metric), ratio,
                                     short_name(a, question.factor), short_name(b, question.factor)))
    return found


def curve(result: FewShotResult) -> pd.DataFrame:
    """Mean and interval over draws of every point of the curve (k = 0 repeated under each selection)."""
    spec, rows = result.spec, []
    for configuration in spec.configurations:
        for selection in spec.selections:
            for k in spec.shots:
                values = scores_at(result.table, configuration.name, k, selection, spec.metric)
                mean, std, low, high = mean_ci(values)
                labelled = result.table.loc[(result.table["configuration"] == configuration.name)
                                            & (result.table["k"] == k)]["n_labelled"].mean()
                rows.append({"configuration": configuration.name, "selection": selection, "k": k,
                             "n_labelled": float(labelled), f"{spec.metric}_mean": mean, f"{spec.metric}_std": std,
                             f"{spec.metric}_ci_low": low, f"{spec.metric}_ci_high": high, "draws": len(values)})
    return pd.DataFrame(rows)


def plot_curve(points: pd.DataFrame, metric: str, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (configuration, selection), part in points.groupby(["configuration", "selection"], sort=False):
        part = part.sort_values("k")
        label = f"{configuration} ({selection})" if points["configuration"].nunique() > 1 else selection
        line = ax.plot(part["k"], part[f"{metric}_mean"], marker="o", label=label)[0]
        ax.fill_between(part["k"], part[f"{metric}_ci_low"], part[f"{metric}_ci_high"], alpha=0.15,
                        color=line.get_color())
    ax.set_xlabel("labelled cells of the new instrument per class (k)")
    ax.set_ylabel(f"test {metric} (mean, 95% CI over draws)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_few_shot_report(result: FewShotResult, target: pd.DataFrame, out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec, metric = result.spec, result.spec.metric
    result.comparisons = comparisons(result)
    points = curve(result)
    result.table.to_csv(out / "per_draw.csv", index=False)
    points.to_csv(out / "curve.csv", index=False)
    result.pools.to_csv(out / "pools.csv", index=False)
    pd.DataFrame([c.__dict__ | {"verdict": c.verdict()} for c in result.comparisons]).to_csv(out / "comparisons.csv",
                                                                                             index=False)
    plot_curve(points, metric, out / "learning_curve.png", f"{spec.base.data} -> {Path(spec.target).stem}")
    counts = target["label"].value_counts().sort_index()
    lines = [f"# Few-shot study: {spec.name}", "",
             f"Source `{spec.base.data}` ({len(spec.configurations)} configuration(s)); new instrument "
             f"`{spec.target}`: {len(target)} cells (" + ", ".join(f"{n} {label}" for label, n in counts.items())
             + f"). {spec.repeats} draws; k = {', '.join(map(str, spec.shots))} labelled cells per class; selection "
             f"{' and '.join(spec.selections)}; metric {metric}. Wall time {result.seconds / 60:.1f} min.", "",
             "Each draw trains a source model (its own seeded split) and halves the new instrument's cells per class "
             "(group-aware): the pool the labelled cells come from, and the test part every score of the draw is "
             "measured on. A class never gives more than half its cells to training: k is capped at the cells a "
             "class has in the pool (random: k per class; suggested: the same number of cells, chosen without "
             "their labels, so a class may get more or fewer). k = 0 is the source model as it is.", "",
             "![learning curve](learning_curve.png)", "", "## Learning curve", "",
             "| configuration | selection | " + " | ".join(f"k={k}" for k in spec.shots) + " |",
             "|---|---|" + "---|" * len(spec.shots)]
    for (configuration, selection), part in points.groupby(["configuration", "selection"], sort=False):
        cells = [f"{r[f'{metric}_mean']:.3f} ({r[f'{metric}_ci_low']:.3f}-{r[f'{metric}_ci_high']:.3f})"
                 for _, r in part.sort_values("k").iterrows()]
        lines.append(f"| {configuration} | {selection} | " + " | ".join(cells) + " |")
    lines += ["", "Labelled cells per point (mean over draws): " + ", ".join(
        f"k={k}: {points.loc[points['k'] == k, 'n_labelled'].iloc[0]:.0f}" for k in spec.shots) + ".",
              "Pool per draw (cells a class can give): " + "; ".join(
        f"draw {int(r['draw'])}: " + ", ".join(f"{c[5:]} {int(r[c])}" for c in result.pools.columns
                                               if c.startswith("pool_") and pd.notna(r[c]))
        for _, r in result.pools.iterrows()) + ".", "", "## Paired verdicts (over draws, corrected resampled t)", ""]
    lines += [f"- {c.question}: {c.verdict()}" for c in result.comparisons]
    lines += ["", "Files: per_draw.csv (every score), curve.csv, comparisons.csv, pools.csv, learning_curve.png."]
    report = out / "study_report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
