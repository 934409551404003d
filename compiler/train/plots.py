"""PNG plots of a run: training curves and confusion matrices (matplotlib; no JAX here).

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), never
through pyplot, so no global backend or figure registry is touched and nothing needs a display.
Each image is rendered to memory first and then written atomically, so a failure leaves no
partial file (and an existing file at `path` unchanged).
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nnspec._io import write_bytes

__all__ = ["plot_confusion", "plot_curves"]

# History keys that are not metrics: the x axis and bookkeeping.
_NOT_PLOTTED = frozenset({"epoch", "seconds", "learning_rate", "lr", "step", "steps"})
_VAL = "val_"
_CELL_TEXT_MAX = 30  # more classes than this: the counts no longer fit in the cells
_DPI = 100


def _family(key: str) -> str:
    """The panel a training series goes to: "loss", "accuracy" or "other"."""
    if key.endswith("loss"):
        return "loss"
    if key.endswith("accuracy"):
        return "accuracy"
    return "other"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _series(history: Sequence[dict[str, float]]) -> dict[str, list[str]]:
    """Training-side series names (without "val_") by family, in first-seen order."""
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            base = key[len(_VAL):] if key.startswith(_VAL) else key
            if base in _NOT_PLOTTED or base in names or not _is_number(value):
                continue
            names.append(base)
    families: dict[str, list[str]] = {}
    for family in ("loss", "accuracy", "other"):
        members = [n for n in names if _family(n) == family]
        if members:
            families[family] = members
    return families


def _values(history: Sequence[dict[str, float]], key: str) -> np.ndarray:
    """One series over epochs, NaN (a gap in the line) where an epoch lacks it."""
    out = []
    for row in history:
        value = row.get(key)
        out.append(float(value) if _is_number(value) else math.nan)
    return np.asarray(out, dtype=np.float64)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches itself as the figure's canvas
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def plot_curves(history: list[dict[str, float]], path: str | os.PathLike, title: str = ""
                ) -> None:
    """Plot training curves to a PNG at `path`: one panel per metric family (loss, accuracy,
    other metrics), each training series as a solid line and its `val_` counterpart dashed in
    the same colour, over the epochs (the rows' "epoch", else 1, 2, ...).

    Raises ValueError when the history is empty or holds no numeric series.
    """
    if not history:
        raise ValueError("no epochs to plot: the history is empty")
    families = _series(history)
    if not families:
        raise ValueError("the history holds no metric to plot")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    fig = Figure(figsize=(5.0 * len(families), 4.2), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, (family, names) in zip(axes, families.items()):
        for i, name in enumerate(names):
            colour = f"C{i % 10}"
            marker = "o" if len(history) == 1 else None
            ax.plot(epochs, _values(history, name), color=colour, marker=marker,
                    label=f"{name} (train)")
            val = _values(history, _VAL + name)
            if not np.isnan(val).all():
                ax.plot(epochs, val, color=colour, linestyle="--", marker=marker,
                        label=f"{name} (validation)")
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(family if family != "other" else "value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or "training curves")
    write_bytes(path, _png(fig))


def plot_confusion(matrix: np.ndarray, labels: Sequence[str] | None, path: str | os.PathLike,
                   title: str = "") -> None:
    """Plot a confusion matrix (rows the true class, columns the predicted one, as
    `evaluation.confusion_matrix` returns it) as a heat map to a PNG at `path`, with the count
    written in each cell (up to 30 classes; beyond that the cells are too small) and the axes
    labelled "true" and "predicted". `labels` names the classes in index order (default: the
    indices).

    Raises ValueError for a matrix that is not square or labels of the wrong length.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a confusion matrix is square and non-empty; got shape {matrix.shape}")
    k = matrix.shape[0]
    names = [str(i) for i in range(k)] if labels is None else [str(x) for x in labels]
    if len(names) != k:
        raise ValueError(f"{len(names)} labels for a {k}x{k} confusion matrix")
    side = min(max(4.5, 0.3 * k + 3.0), 16.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 2 else 0,
                  ha="right" if max(map(len, names)) > 2 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if k <= _CELL_TEXT_MAX:
        top = float(matrix.max()) if matrix.size else 0.0
        for i in range(k):
            for j in range(k):
                value = matrix[i, j]
                text = f"{value:g}" if np.issubdtype(matrix.dtype, np.floating) else str(value)
                dark = top > 0 and value > top / 2
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="white" if dark else "black")
    write_bytes(path, _png(fig))
