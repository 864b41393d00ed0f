"""The study report: results table, per-question comparison plots (per-fold dots with CIs), verdicts, the leakage
audit and the data summary, as Markdown plus the CSVs behind it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .spec import GROUP_METRICS, METRICS  # noqa: E402
from .statistics import mean_ci  # noqa: E402


def short_name(name: str, factor: str) -> str:
    """A configuration's level of the factor in question (e.g. 'cell'), for plots and verdicts."""
    parts = dict(p.split("=", 1) for p in name.split("__") if "=" in p)
    return parts.get(factor, name) if factor != "control" else ("background only" if "background" in name else "reference")


def _plot_question(question, scores, metric, path: Path, ylabel: str = "") -> Path:
    names = list(dict.fromkeys([n for pair in question.pairs for n in pair]))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 3.8))
    rng = np.random.default_rng(0)
    for x, name in enumerate(names):
        values = np.array(scores[name][metric])
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, s=14, alpha=0.6, color="tab:blue")
        mean, _, low, high = mean_ci(values)
        ax.errorbar(x + 0.25, mean, yerr=[[mean - low], [high - mean]] if np.isfinite(low) else None, fmt="o",
                    color="black", capsize=4)
    ax.set_xticks(range(len(names)), [short_name(n, question.factor) for n in names], rotation=15)
    ax.set_ylabel(ylabel or f"test {metric} per fold")
    ax.set_title("\n".join(textwrap.wrap(question.name, 45)), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result, table: pd.DataFrame, notes: list[str], out: Path) -> Path:
    """The study's report (study_report.md) and its tables (results.csv, per_fold.csv, comparisons.csv) and plots
    in ``out``: verdicts, results, comparisons, the background-only control, the leakage audit and the data."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _write_tables(result, out)
    lines = (_header(result, table) + _results(result, rows) + _per_source(result, out) + _comparisons(result, out)
             + _control(result, table) + _audit_and_data(result, table, notes))
    report = out / "study_report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _write_tables(result, out: Path) -> list[dict]:
    """results.csv (each configuration's mean, sd and interval per metric), per_fold.csv, comparisons.csv."""
    rows = []
    for name, per_metric in result.scores.items():
        row = {"configuration": name}
        for metric in (*[m for m in GROUP_METRICS if m in per_metric], *METRICS):
            mean, std, low, high = mean_ci(np.array(per_metric[metric]))
            row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        rows.append(row)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    held = {i: f.held_out for i, f in enumerate(result.folds) if f.held_out}
    per_fold = pd.DataFrame([{"configuration": n, "fold": i, **({"held_out": held[i]} if held else {}),
                              **{m: v[m][i] for m in (*GROUP_METRICS, *METRICS) if m in v}}
                             for n, v in result.scores.items() for i in range(len(v[METRICS[0]]))])
    per_fold.to_csv(out / "per_fold.csv", index=False)
    pd.DataFrame([c.__dict__ | {"verdict": c.verdict()} for c in result.comparisons]).to_csv(
        out / "comparisons.csv", index=False)
    return rows


def _header(result, table: pd.DataFrame) -> list[str]:
    """Title, data, protocol and the verdicts."""
    spec = result.spec
    val_note = (", or the configuration's `val_fraction` where it is a factor (carved anew, the test parts unchanged)"
                if any("val_fraction" in c.factors for c in spec.configurations) else "")
    protocol = (f"train on `{spec.base.data}` ({spec.repeats} seeds, each with its own stratified hold-out split), "
                f"test on {', '.join(f'`{t}`' for t in spec.tests)}; compared: the first test dataset's scores"
                if spec.protocol == "cross_dataset" else
                f"leave one source out: each of {', '.join(f'`{h}`' for h in _held_out(result))} tested on in turn "
                f"(all its images), trained on the other sources ({spec.repeats} seeds, each with its own "
                f"{spec.val_fraction:.0%} validation split of the training sources); compared: the mean over "
                f"held-out sources, paired by source and seed" if spec.protocol == "leave_one_source_out" else
                f"{spec.repeats} x {spec.folds}-fold stratified, group-aware cross-validation "
                f"(validation split of {spec.val_fraction:.0%} inside each training fold{val_note}; the same folds "
                f"for every configuration)" if spec.protocol == "cv" else
                f"a single stratified hold-out split ({1 - spec.base.val_fraction - spec.base.test_fraction:.0%} "
                f"train, {spec.base.val_fraction:.0%} validation, {spec.base.test_fraction:.0%} test)")
    lines = [f"# Study: {spec.name}", "",
             f"Data: `{spec.base.data}`, {len(table)} images; protocol: {protocol}. Compared metric: test "
             f"{spec.metric}. Wall time {result.seconds / 60:.1f} min.", "", "## Verdicts", ""]
    lines += [f"- **{c.question}** {c.verdict()}; Wilcoxon signed-rank p={c.wilcoxon_p:.3g}, "
              f"{c.n_folds} paired folds." for c in result.comparisons]
    return lines + ["", "Differences are (second - first) per fold; their 95 % interval comes from the corrected "
                        "resampled t-test (Nadeau & Bengio 2003), which widens the naive interval because training "
                        "sets overlap between folds. An interval that covers zero means no detectable difference.",
                    ""]


def _results(result, rows: list[dict]) -> list[str]:
    """The results table: per group first (when the study scores groups), then per cell, then further scores."""
    spec = result.spec
    first = next(iter(result.scores.values()), {})
    groups_first = [k for k in GROUP_METRICS if all(k in v for v in result.scores.values())]  # per patient first
    extra = [k for k in first if k not in METRICS + GROUP_METRICS and all(k in v for v in result.scores.values())]
    columns = tuple(groups_first) + METRICS + tuple(extra)
    lines = ["## Results", ""]
    if groups_first:
        lines += [f"Per {spec.base.group_column} first (one call per {spec.base.group_column} from all its cells, "
                  f"by {spec.base.group_aggregate} unless the configuration says otherwise: `group_*`), then per "
                  f"cell.", ""]
    lines += ["| configuration | " + " | ".join(f"{m} (95% CI)" for m in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for row in rows:
        for key in (*groups_first, *extra):
            mean, _, low, high = mean_ci(np.array(result.scores[row["configuration"]][key]))
            row.update({f"{key}_mean": mean, f"{key}_ci_low": low, f"{key}_ci_high": high})
        lines.append(f"| {row['configuration']} | " + " | ".join(
            f"{row[f'{m}_mean']:.3f} ({row[f'{m}_ci_low']:.3f}-{row[f'{m}_ci_high']:.3f})" for m in columns) + " |")
    if extra:
        lines += ["", "in_domain_macro_f1: the training dataset's own hold-out test split; shift_far_share: the share "
                      "of test images beyond the 99th percentile of the training images' colour, contrast and "
                      "sharpness; <name>_macro_f1: the further test datasets."]
    return lines


def _held_out(result) -> list[str]:
    return list(dict.fromkeys(f.held_out for f in result.folds if f.held_out))


def _per_source(result, out: Path) -> list[str]:
    """Leave one source out: each configuration's score on each held-out source (mean over seeds, and the range),
    and per_source.csv. Settings are chosen on the mean over sources, never on one of them."""
    sources = _held_out(result)
    if not sources:
        return []
    metric = result.spec.metric
    rows = []
    for name, per_metric in result.scores.items():
        for source in sources:
            values = np.array([v for v, f in zip(per_metric[metric], result.folds) if f.held_out == source])
            rows.append({"configuration": name, "held_out": source, f"{metric}_mean": float(np.mean(values)),
                         f"{metric}_min": float(np.min(values)), f"{metric}_max": float(np.max(values)),
                         "seeds": len(values)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "per_source.csv", index=False)
    lines = ["", f"## Per held-out source ({metric}: mean over seeds, range)", "",
             "| configuration | " + " | ".join(sources) + " | mean over sources |", "|---|" + "---|" * (len(sources) + 1)]
    for name in result.scores:
        cells = [table[(table.configuration == name) & (table.held_out == s)].iloc[0] for s in sources]
        lines.append(f"| {name} | " + " | ".join(f"{c[f'{metric}_mean']:.3f} ({c[f'{metric}_min']:.3f}-"
                                                 f"{c[f'{metric}_max']:.3f})" for c in cells)
                     + f" | {np.mean([c[f'{metric}_mean'] for c in cells]):.3f} |")
    return lines + ["", "Choose settings on the mean over held-out sources: the best setting for one source is "
                        "often not the best for the next instrument. [per_source.csv](per_source.csv)"]


def _comparisons(result, out: Path) -> list[str]:
    """One plot per question (per-fold dots with intervals)."""
    spec = result.spec
    lines = ["", "## Comparisons", ""]
    for i, question in enumerate(spec.questions):
        ylabel = (f"{spec.metric} on {Path(spec.tests[0]).stem}, per seed" if spec.protocol == "cross_dataset"
                  else "")
        path = _plot_question(question, result.scores, spec.metric, out / f"question_{i}.png", ylabel)
        lines += [f"### {question.name}", "", f"![{question.name}]({path.name})", ""]
    return lines


def _control(result, table: pd.DataFrame) -> list[str]:
    """The background-only control (the configuration flagged as control) against guessing."""
    background = [c.name for c in result.spec.configurations if c.control]
    if not background:
        return []
    mean, _, low, high = mean_ci(np.array(result.scores[background[0]]["balanced_accuracy"]))
    chance = 1 / table["label"].nunique()
    return ["## Background-only control", "",
            f"With the cell masked out, balanced accuracy is {mean:.3f} (95% CI {low:.3f}-{high:.3f}) against "
            f"{chance:.3f} for guessing. " + ("The background alone predicts the label above chance: the "
                                               "dataset leaks its labels through acquisition or surroundings, "
                                               "so part of any whole-image score may not come from the cell."
                                               if low > chance else
                                               "No evidence that the background alone predicts the label."), ""]


def _audit_and_data(result, table: pd.DataFrame, notes: list[str]) -> list[str]:
    """The leakage audit of every fold, the images per class, the data notes and the files."""
    spec = result.spec
    counts = table.groupby("label").size()
    groups = table.groupby("group").size()
    lines = ["## Leakage audit", "",
             f"Every fold was audited for images shared between its train, validation and test parts (same path, "
             f"same bytes, or a near copy: hash distance <= {spec.base.near_duplicate_distance} in any flip/rotation "
             f"or crop, confirmed by a fine-structure similarity >= {spec.base.copy_similarity}): "
             f"**{result.leaks} leaks**. {int((groups > 1).sum())} groups of several images (copies, near copies "
             f"or the data's own groups; {int(groups[groups > 1].sum())} images) were kept on one side of every "
             f"split.", "",
             "## Data", "", "| class | images |", "|---|---|"]
    lines += [f"| {label} | {n} |" for label, n in counts.items()]
    lines += [""] + [f"- note: {n}" for n in notes]
    return lines + ["", "Files: [results.csv](results.csv), [per_fold.csv](per_fold.csv), "
                        "[comparisons.csv](comparisons.csv)."]
