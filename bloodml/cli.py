"""The command line: a thin click layer over bloodml's functions. Errors print one line, never a traceback."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import textwrap
from pathlib import Path

from .environment import require_packages

require_packages()  # before click and the rest: a Python without bloodml's packages gets one line, not a traceback

import click  # noqa: E402

from .config import GROUPS, PARAMETERS, build_config, command_parameters, commands_reading, format_value  # noqa: E402
from .errors import BloodmlError  # noqa: E402


HELP_WIDTH = 110


def _one_line(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters at a word, marked with '...' when cut."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    return text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


class RunCommand(click.Command):
    """A command whose run parameters are listed under their group's heading, one line each (the full text:
    `bloodml params`)."""

    def format_options(self, ctx, formatter):
        own = [p.get_help_record(ctx) for p in self.get_params(ctx) if not getattr(p, "run_parameter", False)]
        with formatter.section("Options"):
            formatter.write_dl([record for record in own if record])
        runs = {p.name: p for p in self.get_params(ctx) if getattr(p, "run_parameter", False)}
        if not runs:
            return
        formatter.write_paragraph()
        formatter.write("Run parameters, each --name VALUE (also a YAML key, and `mlflow run -P name=value`);\n"
                        "`bloodml params [GROUP]` describes each in full. Defaults in parentheses.\n")
        left = max(len(f"--{name}") for name in runs) + 2
        for group, title in GROUPS.items():
            names = [name for name in runs if PARAMETERS[name].metadata["group"] == group]
            if not names:
                continue
            formatter.write(f"{title}:\n")
            for name in names:
                meta = PARAMETERS[name].metadata
                choices = f" [{'|'.join(meta['choices'])}]" if meta["choices"] else ""
                default = format_value(PARAMETERS[name].default)
                tail = f"{choices} ({default or 'empty'})"
                text = _one_line(meta["help"], HELP_WIDTH - left - 4 - len(tail)) + tail
                formatter.write(f"  {f'--{name}':<{left}}{text}\n")


def parameter_options(command_name: str):
    """The run parameters ``command_name`` reads (config.COMMAND_PARAMETERS), each as --name (the spelling `mlflow
    run -P name=...` passes) and --name-with-dashes."""
    def decorate(command):
        for name in reversed(command_parameters(command_name)):
            spec = PARAMETERS[name]
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            command = click.option(*flags, name, default=None, metavar="VALUE", help=spec.metadata["help"])(command)
            command.__click_params__[-1].run_parameter = True
        return command
    return decorate


def run_options(command_name: str):
    """The run parameters ``command_name`` reads, plus --config, the run configuration file they override."""
    def decorate(command):
        return click.option("--config", "config_path", default=None, metavar="YAML",
                            help="run configuration file (experiments/*.yaml); other options override it")(
            parameter_options(command_name)(command))
    return decorate


def _config(config_path, values):
    return build_config(config_path or None, {k: v for k, v in values.items() if v is not None})


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """bloodml: train, track and compare transfer-learning CNNs on small blood-cell datasets."""


@cli.command(cls=RunCommand)
@run_options("train")
@click.option("--resume", "resume_run_id", default=None, metavar="RUN_ID",
              help="continue an interrupted run from its last complete epoch (its logged parameters are used)")
def train(config_path, resume_run_id, **values):
    """Train one configured run and log it to MLflow."""
    from .train import run_training

    if resume_run_id:
        from .tracking.runs import logged_params
        from .tracking.store import configure_tracking

        configure_tracking()
        logged = logged_params(resume_run_id)
        config = build_config(None, {k: v for k, v in logged.items() if k in PARAMETERS})
        run_training(config, resume_run_id=resume_run_id)
        return
    run_training(_config(config_path, values))


@cli.command(cls=RunCommand)
@run_options("pretrain")
@click.option("--name", "register_name", default="bloodml-backbone", show_default=True,
              help="register the backbone under this name in the Model Registry ('' : do not register)")
@click.option("--alias", default="pbc", show_default=True, help="the alias moved to the new version")
@click.option("--resume", "resume_run_id", default=None, metavar="RUN_ID",
              help="continue an interrupted pretraining from its last complete epoch (its logged parameters)")
def pretrain(config_path, register_name, alias, resume_run_id, **values):
    """Fine-tune a backbone on a large labelled pool (default: pbc), log it as a backbone and register it;
    prints its URI for backbone=models:/<name>@<alias>. Run parameters default to recipe=pretrain."""
    from .pretrain import pretrain_config, run_pretrain

    if resume_run_id:
        from .tracking.runs import logged_params
        from .tracking.store import configure_tracking

        configure_tracking()
        logged = logged_params(resume_run_id)
        config = build_config(None, {k: v for k, v in logged.items() if k in PARAMETERS})
    else:
        config = pretrain_config(config_path, values)
    run_pretrain(config, register_name, alias, resume_run_id)


@cli.command(cls=RunCommand)
@run_options("segment")
@click.option("--register", "register_as", default="", metavar="NAME",
              help="register the segmenter under NAME in the Model Registry, alias champion")
def segment(config_path, register_as, **values):
    """Train a cell segmenter (background / cytoplasm / nucleus) on the expert masks; log it to MLflow."""
    from .segment import run_segment

    run_segment(_config(config_path, values), register_as)


@cli.command("segment-score", cls=RunCommand)
@click.option("-m", "--model", "reference", required=True,
              help="the segmenter: runs:/<id>/segmenter, models:/<name>@<alias> or a run ID")
@run_options("segment-score")
def segment_score(reference, config_path, **values):
    """Score a segmenter on another dataset's expert masks (Dice/IoU with intervals, overlay gallery)."""
    from .segment import score_segmenter

    score_segmenter(reference, _config(config_path, values))


@cli.command(cls=RunCommand)
@run_options("tune")
@click.option("--n_trials", "--n-trials", "n_trials", default=20, show_default=True, type=int,
              help="finished-or-pruned trials the study should hold (all workers together)")
@click.option("--timeout", default=0.0, show_default=True, type=float,
              help="seconds this worker may keep starting trials (0: no limit)")
@click.option("--study_name", "--study-name", "study_name", default="", help="Optuna study name (default from data)")
@click.option("--storage", default="", help="Optuna storage (default: $BLOODML_OPTUNA_STORAGE, else "
              "sqlite:///optuna.db); postgresql://user@host/db shares a study between machines, its password from "
              "PGPASSFILE/PGPASSWORD, never in the URL")
@click.option("--objective", default="val_macro_f1", show_default=True,
              help="val_macro_f1, val_balanced_accuracy, val_accuracy or val_loss (validation split)")
@click.option("--space", default="", help="YAML search space replacing the default (experiments/tune_space.yaml)")
@click.option("--pruner", default="median", show_default=True, help="median, halving or none")
@click.option("--model_name", "--model-name", "model_name", default="", help="registry name (default from data)")
@click.option("--refit", is_flag=True, help="then train the best trial's configuration on all the data (bloodml "
              "refit) and register it as @refit")
def tune(config_path, n_trials, timeout, study_name, storage, objective, space, pruner, model_name, refit,
         **values):
    """Optuna search over augmentation and regularisation; registers the best model as @champion."""
    from .tuning.study import TuneSettings, tune as run_tune

    storage = storage or os.environ.get("BLOODML_OPTUNA_STORAGE") or "sqlite:///optuna.db"
    run_tune(_config(config_path, values), TuneSettings(n_trials=n_trials, timeout=timeout, study_name=study_name,
                                                       storage=storage, objective=objective, space=space,
                                                       pruner=pruner, model_name=model_name, refit=refit))


@cli.command(cls=RunCommand)
@click.option("--config", "study_file", required=True, help="study file, e.g. experiments/wbc_study_offline.yaml")
@click.option("--out", default="", help="folder for the report (default study-<name>)")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="override a run parameter for every run")
@click.option("--resume", is_flag=True, help="continue the study's latest run: configurations that finished are reused")
@click.option("--storage", default="", help="with --worker: the Optuna storage the workers share (postgresql://user@"
              "host/db; the password in PGPASSFILE, not here; default $BLOODML_OPTUNA_STORAGE)")
@click.option("--worker", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="take cells (configuration x fold) from the shared storage until none is left; start one per "
                   "machine or GPU, any number")
@parameter_options("study")
def study(study_file, out, sets, resume, storage, worker, **values):
    """Answer a study's questions: every configuration on the same folds, paired tests, a report. Run parameters
    (--data, --epochs, ...) override the study file's settings for every run, as --set does."""
    from .study.runner import run_study
    from .study.spec import load_study

    overrides = {k: v for k, v in values.items() if v is not None}
    for item in sets:
        if "=" not in item:
            raise BloodmlError(f"--set '{item}' needs NAME=VALUE, e.g. --set epochs=10.")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    spec = load_study(study_file, overrides)
    folder = _writable_folder(Path(out or f"study-{spec.name}").expanduser(), f"--out {out}" if out else
                              "the report folder")
    storage = storage or os.environ.get("BLOODML_OPTUNA_STORAGE", "")
    if worker:
        from .study.distributed import run_worker

        if not storage:
            raise BloodmlError("--worker needs --storage <the Optuna storage the workers share> (or "
                               "BLOODML_OPTUNA_STORAGE), e.g. postgresql://bloodml@db-host/optuna.")
        run_worker(spec, folder, storage)
        return
    run_study(spec, folder, resume=resume)


@cli.command("study-report")
@click.argument("run_id")
@click.option("--out", default="", help="folder for the report (default study-<name>)")
@click.option("--storage", default="", help="the Optuna storage (default: the one the study run logged, or "
              "$BLOODML_OPTUNA_STORAGE)")
def study_report_cmd(run_id, out, storage):
    """A shared study's progress (cells done / running / waiting) and, once every cell is in, its report."""
    from .study.distributed import study_report

    study_report(run_id, Path(out).expanduser() if out else None, storage)


@cli.command(cls=RunCommand)
@click.option("--study", default="", metavar="RUN_ID", help="refit this study's best configuration (its parent run)")
@click.option("--stopping", type=click.Choice(["share", "epochs"]), default="share", show_default=True,
              help="how long to train without a test split: early stopping on a validation share (share), or the "
                   "median best epoch of the study's folds (epochs)")
@click.option("--val-share", "val_share", type=float, default=0.1, show_default=True,
              help="--stopping share: the validation share (whole groups)")
@click.option("--register", "register_name", default="", metavar="NAME", help="register the refit model under NAME")
@click.option("--alias", default="", help="with --register: an alias to point at the new version")
@click.option("--champion", type=click.BOOL, default=False, show_default=True,
              help="with --register: move @champion to it too (true; only when asked)")
@click.option("--estimate", type=click.BOOL, default=True, show_default=True,
              help="without --study: cross-validate the configuration first (a one-configuration study, "
                   "--estimate-folds x --estimate-repeats), so the refit carries an expected performance")
@click.option("--estimate-folds", "--estimate_folds", "estimate_folds", type=click.IntRange(2, 20), default=5,
              show_default=True)
@click.option("--estimate-repeats", "--estimate_repeats", "estimate_repeats", type=click.IntRange(1, 20), default=3,
              show_default=True)
@click.option("--out", default="", help="with --estimate: the estimate's report folder (default study-estimate-<name>)")
@run_options("refit")
def refit(study, stopping, val_share, register_name, alias, champion, estimate, estimate_folds, estimate_repeats, out,
          config_path, **values):
    """Train the chosen configuration (a study's best, or --config) on all the data, carrying the study's estimate
    as its expected performance."""
    from .refit import run_refit
    from .study.estimate import estimate_and_refit

    overrides = {k: v for k, v in values.items() if v is not None}
    if study and config_path:
        raise BloodmlError("refit: give --study or --config, not both (a study's configuration is its own).")
    options = dict(stopping=stopping, val_share=val_share, register_name=register_name, alias=alias,
                   champion=champion)
    if study:
        run_refit(study, None, overrides, **options)
        return
    config = _config(config_path, values)
    if not estimate:
        run_refit("", config, overrides, **options)
        return
    from .study.estimate import estimate_name

    folder = _writable_folder(Path(out or f"study-{estimate_name(config)}")
                              .expanduser(), f"--out {out}" if out else "the estimate's report folder")
    estimate_and_refit(config, folder, estimate_folds, estimate_repeats, overrides=overrides, **options)


@cli.command("evaluate", cls=RunCommand)
@click.option("-m", "--model", "reference", required=True, help="models:/<name>@<alias>, runs:/<id>/model or a run ID")
@click.option("--label-map", default="", help="their label -> the model's class, e.g. 'LY=lymphocyte,NE=neutrophil'")
@click.option("--unseen", is_flag=True, help="leave out the images the model was trained on (its split manifest; an "
              "adapted model's labelled cells too)")
@run_options("evaluate")
def evaluate_cmd(reference, label_map, unseen, config_path, **values):
    """Score a trained model on another dataset (layout options as for train) and log it as its own run."""
    from .evaluate import as_trained, evaluate_model
    from .tracking.store import configure_tracking

    if not config_path:  # read as the model's training data was, unless told otherwise
        configure_tracking()
        values = as_trained(reference, {k: v for k, v in values.items() if v is not None})
    evaluate_model(reference, _config(config_path, values), label_map, unseen=unseen)


@cli.command(cls=RunCommand)
@click.option("-m", "--model", "reference", required=True,
              help="the model to adapt: models:/<name>@<alias>, runs:/<id>/model or a run ID")
@click.option("--register", "register_name", default="", metavar="NAME",
              help="register the adapted model under NAME in the Model Registry")
@click.option("--alias", default="", help="with --register: the alias to move, e.g. the instrument's name")
@run_options("adapt")
def adapt(reference, register_name, alias, config_path, **values):
    """Adapt a trained model to a new instrument with a few labelled cells (--data: any layout bloodml reads, e.g.
    the CSV bloodml suggest wrote, its label column filled in); logs a run that names its parent model."""
    from .adapt import run_adapt

    if alias and not register_name:
        raise BloodmlError("--alias needs --register NAME (the registered model the alias belongs to).")
    config = _config(config_path, values)
    if not config.data:
        raise BloodmlError("adapt needs --data: the new instrument's labelled cells (a CSV image,label[,mask], a "
                           "folder per class, ...).")
    run_adapt(reference, config, register_name, alias)


@cli.command(cls=RunCommand)
@click.option("-m", "--model", "reference", required=True, help="models:/<name>@<alias>, runs:/<id>/model or a run ID")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(1, 100000),
              help="how many cells to suggest")
@click.option("-o", "--output", default="to_label.csv", show_default=True,
              help="the CSV to fill in (the contact sheet is written beside it, same name, .png)")
@click.option("--masks-dir", "--masks_dir", "masks_dir", default="",
              help="the masks, at the images' sub-paths (default: a masks folder beside the class folders)")
@run_options("suggest")
def suggest(reference, inputs, count, output, masks_dir, config_path, **values):
    """Rank a new instrument's unlabelled cells (files, folders or a CSV) to label first; writes a CSV with an empty
    label column for bloodml adapt, and a contact sheet of the picks."""
    from .compute import resolve
    from .suggest import suggest_cells
    from .tracking.store import configure_tracking

    target = _output_file(output, "to_label.csv")  # checked before the work, not after
    sheet = target.with_suffix(".png")
    from .runtime import configure

    config = _config(config_path, values)
    configure(config.threads, config.seed)
    configure_tracking()
    picked = suggest_cells(reference, list(inputs), count, target, masks_dir, config.near_duplicate_distance,
                           config.copy_similarity, config.suggest_uncertainty,
                           resolve(config.device, config.precision))
    try:
        picked.write(target)
    except OSError as exc:
        raise BloodmlError(f"{target}: cannot be written ({exc.strerror or exc}); free some space or pass another -o.")
    if picked.copies:
        click.echo(f"{len([c for c in picked.copies if '/masks/' not in str(c[1])])} picked cells lie outside "
                   f"{target.parent}, where bloodml reads the CSV's images: copied into "
                   f"{target.parent / (target.stem + '_cells')} (column original: where each came from)")
    calls = picked.table["predicted"].value_counts()
    click.echo(f"{len(picked.table)} cells to label first -> {target} (contact sheet {sheet}); the model calls them "
               + ", ".join(f"{k} {v}" for k, v in calls.items())
               + f". Fill in the label column, then: bloodml adapt -m {reference} --data {target}")


@cli.command("audit-split")
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option("--train", "train_dir", type=click.Path(path_type=Path), help="folder of training images (any depth)")
@click.option("--val", "val_dir", type=click.Path(path_type=Path), help="folder of validation images")
@click.option("--test", "test_dir", type=click.Path(path_type=Path), help="folder of test images")
@click.option("--root", type=click.Path(path_type=Path), help="data folder the manifest's paths are relative to")
@click.option("--near-distance", "--near_duplicate_distance", "near_distance", type=int,
              default=PARAMETERS["near_duplicate_distance"].default, show_default=True,
              help="hash distance (any flip/rotation or crop) that makes a near-copy candidate; -1: none")
@click.option("--copy-similarity", "--copy_similarity", "similarity", type=float,
              default=PARAMETERS["copy_similarity"].default, show_default=True,
              help="fine-structure similarity from which a candidate counts as a copy (the second look)")
def audit_split(manifest, train_dir, val_dir, test_dir, root, near_distance, similarity):
    """Check a split for leaks (same path, same bytes, near copies). Exit 1 if anything leaks, 0 if clean."""
    from .splitting.audit import find_leaks, table_from_folders, table_from_manifest

    folders = {k: v for k, v in (("train", train_dir), ("val", val_dir), ("test", test_dir)) if v}
    if bool(manifest) == bool(folders):
        raise BloodmlError("audit-split needs either a MANIFEST file or --train/--val/--test folders (not both).")
    if folders and len(folders) < 2:
        raise BloodmlError("audit-split needs at least two of --train, --val, --test to compare.")
    table = table_from_manifest(manifest, root) if manifest else table_from_folders(folders)
    leaks = find_leaks(table, near_distance, similarity)
    counts = table["split"].value_counts()
    click.echo("images: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in sorted(counts.index)))
    if not leaks:
        click.echo("clean: no image is shared between splits (path, content or near-duplicate)")
        return
    by_kind = {k: sum(1 for l in leaks if l.kind == k) for k in ("path", "content", "near-duplicate")}
    for leak in leaks[:50]:
        click.echo(f"LEAK {leak.line()}")
    if len(leaks) > 50:
        click.echo(f"... and {len(leaks) - 50} more")
    click.echo(f"LEAKING: {len(leaks)} cross-split pairs ({', '.join(f'{v} {k}' for k, v in by_kind.items())})")
    sys.exit(1)


@cli.command()
@click.argument("run_id")
@click.option("--name", required=True, help="registered model name, e.g. wbc-classifier")
@click.option("--alias", default="champion", show_default=True, help="alias pointed at the new version")
def register(run_id, name, alias):
    """Put a run's model in the MLflow Model Registry under NAME, with an alias."""
    from .tracking.registry import register as register_model
    from .tracking.store import configure_tracking

    configure_tracking()
    version = register_model(run_id, name, alias)
    click.echo(f"registered {name} version {version}" + (f", alias {alias}: models:/{name}@{alias}" if alias else ""))


@cli.command()
@click.option("-m", "--model", "reference", required=True,
              help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model or a run ID")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--masks-dir", default=None, help="folder of masks named like the images (models trained with masks)")
@click.option("-o", "--output", default="predictions.csv", show_default=True,
              help="CSV to write (a folder: predictions.csv in it)")
@click.option("--pattern", default="*", show_default=True,
              help="file names to take from folders, e.g. '*.bmp' when masks sit beside the images")
@click.option("--masks-from", "--masks_from", "masks_from", default="",
              help="masked models: auto (a mask where there is one, else the segmenter) or model:<uri> (the "
                   "segmenter for every image); default: as the model was trained")
@click.option("--segmenter", default="", help="the segmenter for --masks-from auto (runs:/<id>/segmenter, models:/...)")
@click.option("--image-column", "--image_column", "image_column", default="image", show_default=True,
              help="CSV inputs: the column with image paths (relative to the CSV)")
@click.option("--group-column", "--group_column", "group_column", default="",
              help="one call per group as well: a column of the CSV input (e.g. patient), or 'folder' (each "
                   "image's folder); writes <output>_groups.csv")
@click.option("--group-aggregate", "--group_aggregate", "group_aggregate", default="",
              help="how a group's cells make one call: mean, logodds, topk, share (default: as the model was trained)")
@click.option("--group-covariates", "--group_covariates", "group_covariates", default="",
              metavar="CSV:COLUMNS", help="a model that calls patients from their covariates too: the new "
              "patients' table and columns, e.g. patients.csv:lymph_count,year_of_birth")
@click.option("--adapt-bn", "--adapt_bn", "adapt_bn", type=bool, is_flag=False, flag_value=True, default=False,
              help="another instrument: re-estimate the model's batch-norm statistics on these images first (AdaBN)")
@click.option("--test-blur", "--test_blur", "test_blur", type=click.FloatRange(0.0, 10.0), default=0.0,
              help="blur the images (Gaussian sigma, pixels of the network input) to match a blurrier training "
                   "instrument")
def predict(reference, inputs, masks_dir, output, pattern, masks_from, segmenter, image_column, group_column,
            group_aggregate, group_covariates, adapt_bn, test_blur):
    """Classify images (files, folders or a CSV listing them) with a trained model; writes a CSV of labels and
    probabilities, and with --group-column one row per group too."""
    from .predict import predict_images
    from .tracking.store import configure_tracking

    target = _output_file(output, "predictions.csv")  # checked before the work, not after
    configure_tracking()
    table, groups = predict_images(reference, list(inputs), masks_dir, pattern=pattern, masks_from=masks_from,
                                   segmenter=segmenter, image_column=image_column, group_column=group_column,
                                   group_aggregate=group_aggregate, adapt_bn=adapt_bn, test_blur=test_blur,
                                   group_covariates=group_covariates)
    _write_csv(table, target)
    counts = table["predicted_label"].value_counts()
    click.echo(f"{len(table)} images -> {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if groups is not None:
        grouped = target.with_name(f"{target.stem}_groups{target.suffix or '.csv'}")
        _write_csv(groups, grouped)
        calls = groups["predicted_label"].value_counts()
        click.echo(f"{len(groups)} groups ({groups['group_aggregate'].iloc[0]} of their cells) -> {grouped}: "
                   + ", ".join(f"{k} {v}" for k, v in calls.items()))


def _writable_folder(folder: Path, option: str) -> Path:
    """``folder`` once it, or the nearest folder above it that exists (where it will be created), takes a file;
    else one line before any work is done, so a long study or a prediction run is not lost at its last step."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".bloodml-write-check-"):
            pass
    except OSError as exc:
        raise BloodmlError(f"{option}: cannot write in {existing} ({exc.strerror or exc}); pass a place you can "
                           f"write to.")
    return folder


def _output_file(output: str, name: str) -> Path:
    """Where ``-o`` says to write: a file, or ``name`` inside it when it is a folder; checked before the work."""
    target = Path(output).expanduser()
    if target.is_dir():
        target = target / name
    _writable_folder(target.parent, f"-o {output}")
    return target


def _write_csv(table, target: Path) -> None:
    """Written whole or not at all: never a half-written CSV."""
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(partial, index=False)
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BloodmlError(f"{target}: cannot be written ({exc.strerror or exc}); free some space or pass another -o.")


@cli.command()
@click.option("-m", "--model", "reference", required=True,
              help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model or a run ID")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every one)")
@click.option("-p", "--port", default=5000, show_default=True, type=int, help="port to listen on")
@click.option("--workers", default=1, show_default=True, type=int, help="server processes")
def serve(reference, host, port, workers):
    """Serve a model to clients that send image files: `mlflow models serve` on the run's image_model."""
    from .serving.command import serve_image_model

    serve_image_model(reference, host, port, workers)


@cli.command()
@click.argument("group", required=False)
def params(group):
    """Every run parameter with its default, choices, range, the commands that take it and its full description;
    GROUP (data, model, augmentation, ...) for one group."""
    if group and group not in GROUPS:
        raise BloodmlError(f"no parameter group '{group}'; use one of {', '.join(GROUPS)}.")
    for key, title in GROUPS.items():
        if group and key != group:
            continue
        click.echo(f"{title} ({key})")
        for name, spec in PARAMETERS.items():
            meta = spec.metadata
            if meta["group"] != key:
                continue
            facts = [f"default {format_value(spec.default) or '(empty)'}"]
            if meta["choices"]:
                facts.append("one of " + ", ".join(meta["choices"]))
            if meta["low"] is not None:
                facts.append(f"from {meta['low']} to {meta['high']}")
            facts.append("taken by " + ", ".join(commands_reading(name)))
            click.echo(f"  {name}: {'; '.join(facts)}")
            for line in textwrap.wrap(meta["help"], HELP_WIDTH - 6):
                click.echo(f"      {line}")
        click.echo("")


@cli.group()
def data():
    """Look at a dataset before training."""


@data.command("fetch")
@click.argument("name")
@click.option("--to", default=None, help="folder to put it in, as NAME/ (default $BLOODML_CACHE/data)")
@click.option("--url", default="", help="another source for the same archive (a mirror); files are checked all the same")
@click.option("--archive", default=None, help="the archive, downloaded by hand (machines without internet)")
def data_fetch(name, to, url, archive):
    """Download a public dataset (pinned source, every file checked against its SHA-256) into the cache."""
    from .data.fetch import fetch

    click.echo(str(fetch(name, to, url, archive)))


@data.command("path")
@click.argument("name")
def data_path(name):
    """Print a named dataset's folder: its development copy in ../shared/data, else the cache, else fetched."""
    from .data.fetch import known, locate

    known(name)
    click.echo(str(locate(name)))


@data.command("inspect", cls=RunCommand)
@run_options("data inspect")
def data_inspect(config_path, **values):
    """Counts per class, image sizes, masks found, duplicates found."""
    from .splitting.inspect import inspect_dataset

    for line in inspect_dataset(_config(config_path, values)):
        click.echo(line)


def _as_options(argv: list[str]) -> str:
    """``name=value`` arguments of run parameters (the spelling of `mlflow run -P`) rewritten as --name value; empty
    when there are none."""
    pairs = [a.split("=", 1) for a in map(str, argv) if not a.startswith("-") and "=" in a]
    known = [(name, value) for name, value in pairs if name in PARAMETERS]
    return " ".join(f"--{name} {shlex.quote(value)}" for name, value in known)


def main(argv=None):
    from .runtime import show_progress

    if not show_progress():  # logs and CI: plain lines, no download bars
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        cli.main(args=argv, prog_name="bloodml", standalone_mode=False)
    except BloodmlError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        written = _as_options(argv if argv is not None else sys.argv[1:]) if isinstance(error, click.UsageError) \
            else ""
        if written:
            click.echo(f"error: {error.format_message()}; options are written --name value: {written}", err=True)
        else:
            error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # an input we did not foresee: still one line, with a way to get details
        if os.environ.get("BLOODML_DEBUG"):
            raise
        message = " ".join(str(error).split())[:300]
        click.echo(f"error: {type(error).__name__}: {message} (rerun with BLOODML_DEBUG=1 for details; "
                   f"please report it)", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
