"""The metrics of a whole split, accumulated batch by batch (numpy only: no JAX here).

`evaluation.evaluate_predictions` reads a split's outputs all at once; a split streamed from
disk can be larger than memory, and so can its outputs (10 classes of 4.3 M samples, scores
in float64, are 340 MB before any temporary). `SplitMetrics` keeps what each metric needs
instead: a confusion matrix for accuracy, precision, recall and F1, counts for top-k and
multi-label accuracy, sums for MAE and RMSE, per-output moments for R², and only for AUC (a
binary output) one score and one label a sample. It gives the same values as
`evaluate_predictions` on the whole split: the counting metrics exactly, the others to
rounding (sums of per-batch sums, `math.fsum`-ed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nnspec.compiler.train.evaluation import (
    METRICS,
    _check_lengths,
    _classes,
    _confusion,
    _rank_auc,
    _ratio,
    _regression,
)

CONFUSION = ("accuracy", "precision", "recall", "f1")
REGRESSION = ("mae", "rmse", "r2")


class SplitMetrics:
    """One output's metrics over a split: `update(outputs, targets)` per batch, then
    `result()`. Arguments as `evaluation.evaluate_predictions`; an unknown metric raises
    ValueError, listing the valid names, before any batch."""

    def __init__(self, metrics: Sequence[str], top_k: int = 5, multi_label: bool = False):
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid "
                             f"metrics: {', '.join(METRICS)}")
        if "top_k_accuracy" in metrics and top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        self.metrics, self.top_k, self.multi_label = list(metrics), top_k, multi_label
        self.samples = 0
        self._confusion: np.ndarray | None = None
        self._top_k_hits = 0
        self._auc: list[tuple[np.ndarray, np.ndarray]] = []
        self._labels_right = self._labels = 0
        self._abs: list[float] = []
        self._square: list[float] = []
        self._values = 0
        self._moments: tuple[int, np.ndarray, np.ndarray] | None = None  # n, mean, M2 of y
        self._residual: np.ndarray | float = 0.0  # per output: the sum of squared errors

    def _wants(self, *names: str) -> bool:
        return any(m in names for m in self.metrics)

    def update(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        """Adds one batch (its real samples only: padding rows already dropped)."""
        outputs, targets = np.asarray(outputs), np.asarray(targets)
        _check_lengths(outputs, targets)
        self.samples += len(outputs)
        if self.multi_label and "accuracy" in self.metrics:
            if targets.size != outputs.size:
                raise ValueError(f"a multi-label output of shape {outputs.shape} needs one 0/1 "
                                 f"target per unit; the targets have shape {targets.shape}")
            self._labels_right += int(np.sum((outputs.reshape(-1) > 0.5)
                                             == (targets.reshape(-1) > 0.5)))
            self._labels += outputs.size
        if self._wants(*(m for m in (*CONFUSION, "top_k_accuracy", "auc")
                         if not (m == "accuracy" and self.multi_label))):
            self._add_classes(outputs, targets)
        if self._wants(*REGRESSION):
            self._add_regression(outputs, targets)

    def _add_classes(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        c = _classes(outputs, targets)
        k = c.num_classes
        if self._confusion is None:
            self._confusion = np.zeros((k, k), np.int64)
        elif self._confusion.shape[0] != k:
            raise ValueError(f"a batch has {k} classes, the ones before "
                             f"{self._confusion.shape[0]}")
        self._confusion += _confusion(c.labels, c.predictions, k)
        if "top_k_accuracy" in self.metrics:
            rows = np.arange(len(c.labels))
            own = c.scores[rows, c.labels][:, None]
            lower = np.arange(k)[None, :] < c.labels[:, None]
            ahead = (c.scores > own) | ((c.scores == own) & lower)
            self._top_k_hits += int(np.sum(ahead.sum(axis=1) < self.top_k))
        if "auc" in self.metrics:
            if k != 2:
                raise ValueError(f"auc needs a binary output (one sigmoid unit or 2 softmax "
                                 f"columns); this one has {k} classes")
            if np.isnan(c.scores[:, 1]).any():
                raise ValueError("auc: the scores contain NaN")
            self._auc.append((c.scores[:, 1].copy(), c.labels.astype(np.int8)))

    def _add_regression(self, outputs: np.ndarray, targets: np.ndarray) -> None:
        pred, true = _regression(outputs, targets)
        error = pred - true
        self._abs.append(float(np.sum(np.abs(error))))
        self._square.append(float(np.sum(np.square(error))))
        self._values += error.size
        if "r2" in self.metrics:
            # Chan's parallel update of each output's mean and M2: stable where the sum of
            # squares less the squared sum would cancel.
            n, mean = len(true), true.mean(axis=0)
            m2 = np.sum(np.square(true - mean), axis=0)
            if self._moments is None:
                self._moments = (n, mean, m2)
            else:
                n0, mean0, m20 = self._moments
                delta, total = mean - mean0, n0 + n
                self._moments = (total, mean0 + delta * n / total,
                                 m20 + m2 + np.square(delta) * n0 * n / total)
            self._residual = self._residual + np.sum(np.square(error), axis=0)

    def result(self) -> dict[str, float]:
        """Each metric by name, over every batch added."""
        if not self.samples:
            raise ValueError("no samples to evaluate")
        out: dict[str, float] = {}
        for name in self.metrics:
            if name == "accuracy" and self.multi_label:
                out[name] = self._labels_right / self._labels
            elif name in CONFUSION:
                out[name] = _from_confusion(name, self._confusion)
            elif name == "top_k_accuracy":
                out[name] = self._top_k_hits / int(self._confusion.sum())
            elif name == "auc":
                out[name] = _rank_auc(np.concatenate([s for s, _ in self._auc]),
                                      np.concatenate([lab for _, lab in self._auc]) == 1)
            elif name == "mae":
                out[name] = math.fsum(self._abs) / self._values
            elif name == "rmse":
                out[name] = math.sqrt(math.fsum(self._square) / self._values)
            else:
                out[name] = self._r2()
        return out

    def _r2(self) -> float:
        n, _, total = self._moments
        if n < 2:
            return float("nan")
        residual = self._residual
        score = np.where(residual == 0, 1.0, 0.0)
        defined = total != 0
        score[defined] = 1.0 - residual[defined] / total[defined]
        return float(np.mean(score))


def _from_confusion(name: str, m: np.ndarray) -> float:
    """accuracy, or the macro precision, recall or F1 of a confusion matrix, as
    `evaluation.accuracy`, `precision`, `recall` and `f1` compute them."""
    tp, predicted, true = np.diag(m), m.sum(axis=0), m.sum(axis=1)
    if name == "accuracy":
        return int(tp.sum()) / int(m.sum())
    present = (predicted + true) > 0
    if name == "precision":
        return float(np.mean(_ratio(tp, predicted)[present]))
    if name == "recall":
        return float(np.mean(_ratio(tp, true)[present]))
    return float(np.mean(_ratio(2.0 * tp, (predicted + true).astype(np.float64))[present]))

