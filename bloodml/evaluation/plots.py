"""The pictures of one run (matplotlib, headless): learning curves, confusion matrix, ROC, reliability,
misclassified gallery, Grad-CAM overlays. Each function writes a PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(history: list[dict], best_epoch: int, path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train", ms=3)
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "o-", label="validation", ms=3)
        ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(4.2 * 2 + len(class_names) * 0.3, 4 + len(class_names) * 0.15))
    with np.errstate(invalid="ignore"):
        normalised = matrix / matrix.sum(axis=1, keepdims=True)
    for ax, data, title, fmt in ((axes[0], matrix, "counts", "{:.0f}"),
                                 (axes[1], normalised, "row-normalised (recall)", "{:.2f}")):
        ax.imshow(np.nan_to_num(data), cmap="Blues", vmin=0)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        top = np.nanmax(data) if np.isfinite(data).any() else 1
        for (i, j), value in np.ndenumerate(data):
            if np.isfinite(value):
                ax.text(j, i, fmt.format(value), ha="center", va="center",
                        color="white" if value > 0.6 * top else "black", fontsize=9)
    return _save(fig, path)


def roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, ci: tuple[float, float], positive: str, path: Path,
        operating_point: tuple[float, float] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if operating_point:
        ax.plot(*operating_point, "o", color="red", label="threshold")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC, positive = {positive}")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def reliability(bins: list[tuple], ece: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    centres = [(low + high) / 2 for low, high, *_ in bins]
    accuracy = [acc if count else 0 for _, _, count, _, acc in bins]
    ax.bar(centres, accuracy, width=1 / len(bins), edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    for centre, (_, _, count, _, acc) in zip(centres, bins):
        if count:
            ax.text(centre, (acc or 0) + 0.02, str(count), ha="center", fontsize=7)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f}; numbers = images)")
    ax.set_ylim(0, 1.1)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def gallery(images: np.ndarray, captions: list[str], path: Path, title: str, columns: int = 6) -> Path:
    """Images (N,H,W,3) uint8 in a grid with a caption each."""
    n = max(len(images), 1)
    columns = max(min(columns, n), 3)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=7)
    if not len(images):
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def gradcam_overlays(images: np.ndarray, maps: np.ndarray, regions: np.ndarray, captions: list[str], path: Path,
                     columns: int = 4) -> Path:
    """Each image with its Grad-CAM heat map and the expert cell outline."""
    n = max(len(images), 1)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.3, rows * 2.5 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, saliency, region, caption in zip(axes.flat, images, maps, regions, captions):
        ax.imshow(image)
        ax.imshow(saliency, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if region is not None and (region > 0).any():
            ax.contour(region > 0, levels=[0.5], colors="white", linewidths=1)
        ax.set_title(caption, fontsize=7)
    fig.suptitle("Grad-CAM (predicted class); white line: expert cell mask", fontsize=10)
    return _save(fig, path)
