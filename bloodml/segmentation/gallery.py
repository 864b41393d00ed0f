"""The overlay gallery: the worst and best test images by cell Dice, each as image | expert | segmenter."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLOURS = np.array([[0, 0, 0], [40, 120, 255], [255, 40, 200]], dtype=np.float32)  # background, cytoplasm, nucleus


def overlay(image: np.ndarray, regions: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB (H,W,3) uint8 with the cytoplasm tinted blue and the nucleus magenta."""
    tint = COLOURS[regions]
    inside = (regions > 0)[..., None]
    mixed = np.where(inside, (1 - alpha) * image + alpha * tint, image)
    return mixed.clip(0, 255).astype(np.uint8)


def save_gallery(images: np.ndarray, expert: np.ndarray, predicted: np.ndarray, dice: np.ndarray, names: list[str],
                 out: Path, per_end: int = 4, what: str = "test images") -> Path:
    """images (N,H,W,3) uint8, region maps (N,H,W); ``per_end`` worst and best rows, worst first."""
    order = np.argsort(dice, kind="stable")
    picks = list(order[:per_end]) + [i for i in order[::-1][:per_end] if i not in order[:per_end]]
    fig, axes = plt.subplots(len(picks), 3, figsize=(6.6, 2.2 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        for col, (title, picture) in enumerate((("image", images[i]), ("expert", overlay(images[i], expert[i])),
                                                ("segmenter", overlay(images[i], predicted[i])))):
            ax = axes[row, col]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{Path(names[i]).name}\ncell Dice {dice[i]:.3f}", fontsize=7)
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle(f"worst {min(per_end, len(picks))} and best {what} (cell Dice)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
