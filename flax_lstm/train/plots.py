"""The run folder's figures: learning curves and the test confusion matrix (PNG).

matplotlib (its object-oriented API and the Agg canvas: no pyplot, no display) is imported
only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flax_lstm.train.checkpoints import atomic_write

__all__ = ["plot_confusion", "plot_learning_curves"]


def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_learning_curves(history: list[dict], best_epoch: int, path: Path) -> None:
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        if history and f"val_{key}" in history[0]:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", linestyle="--", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, classes: list[str], acc: float, path: Path) -> None:
    from matplotlib.figure import Figure

    k = len(classes)
    size = min(12, 3 + 0.45 * k)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= 40:
        ax.set_xticks(range(k), [c[:12] for c in classes], rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), [c[:12] for c in classes])
    if k <= 25:
        hi = confusion.max() / 2 if confusion.size else 0
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    color = "white" if confusion[i, j] > hi else "black"
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test confusion matrix (accuracy {acc:.4f})")
    fig.tight_layout()
    _save_figure(fig, path)
