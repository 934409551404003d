"""Exact metrics of a whole split, from host arrays (numpy only: no JAX here).

`compiler/train/metrics.py` accumulates per-batch sums on the device while training; this module
evaluates a finished model's outputs over a whole split at once, so that metrics that are not
sums over samples (precision, recall, F1, ROC AUC, R²) are exact rather than batch averages.
Each metric matches scikit-learn's definition (the tests check it); the choices where several
are possible are written on each function.

Classification outputs are class probabilities of shape (..., K), K >= 2 (the last axis holds
the classes; leading axes beyond the first, such as sequence positions, count as more samples),
or the probability of a single sigmoid unit, shape (N,) or (..., 1), which reads as two classes:
class 1 when the probability is above 0.5. Targets are integer labels of the outputs' shape less
the class axis, or one-hot (or soft) targets of the outputs' shape, read by their argmax; a
sigmoid's targets are 0/1 (above 0.5 is class 1). Regression outputs have any shape, and the
targets the same number of values per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["METRICS", "accuracy", "auc", "binary_accuracy", "confusion_matrix",
           "evaluate_predictions", "f1", "mae", "precision", "r2", "recall", "rmse",
           "top_k_accuracy"]


@dataclass(frozen=True)
class _Classes:
    """A classification output read as scores per class, true labels and predicted labels."""

    scores: np.ndarray       # (M, K), K >= 2; a sigmoid's probability p reads as [1 - p, p]
    labels: np.ndarray       # (M,) int64, in [0, K)
    predictions: np.ndarray  # (M,) int64, in [0, K)

    @property
    def num_classes(self) -> int:
        return self.scores.shape[1]


def _check_lengths(outputs: np.ndarray, targets: np.ndarray) -> None:
    if outputs.ndim == 0 or targets.ndim == 0:
        raise ValueError("outputs and targets need a leading sample axis; got shapes "
                         f"{outputs.shape} and {targets.shape}")
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs but {len(targets)} targets")
    if len(outputs) == 0:
        raise ValueError("no samples to evaluate")


def _integer_labels(values: np.ndarray) -> np.ndarray:
    """Class labels as int64; float arrays are accepted when they hold whole numbers."""
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        return values.astype(np.int64)
    as_int = np.rint(values)
    if not np.all(as_int == values):
        raise ValueError("class labels must be whole numbers (or give one-hot targets of the "
                         "outputs' shape)")
    return as_int.astype(np.int64)


def _classes(outputs: np.ndarray, targets: np.ndarray) -> _Classes:
    """Read a classification output and its targets (see the module docstring)."""
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    _check_lengths(outputs, targets)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:  # one sigmoid unit
        p = outputs.reshape(-1).astype(np.float64)
        if targets.size != p.size:
            raise ValueError(f"a single-unit output of shape {outputs.shape} needs one 0/1 "
                             f"target per value; the targets have shape {targets.shape}")
        labels = (targets.reshape(-1) > 0.5).astype(np.int64)
        return _Classes(np.stack([1.0 - p, p], axis=1), labels, (p > 0.5).astype(np.int64))
    k = outputs.shape[-1]
    scores = outputs.reshape(-1, k).astype(np.float64)
    if targets.shape == outputs.shape:
        labels = np.argmax(targets.reshape(-1, k), axis=1).astype(np.int64)
    elif targets.shape == outputs.shape[:-1]:
        labels = _integer_labels(targets.reshape(-1))
    else:
        raise ValueError(f"targets of shape {targets.shape} fit neither integer labels "
                         f"{outputs.shape[:-1]} nor one-hot targets {outputs.shape} of outputs "
                         f"of shape {outputs.shape}")
    if labels.size == 0:
        raise ValueError(f"outputs of shape {outputs.shape} hold no samples to evaluate")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"class labels range over [{labels.min()}, {labels.max()}] but the "
                         f"outputs have {k} classes")
    return _Classes(scores, labels, np.argmax(scores, axis=1).astype(np.int64))


def _confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def confusion_matrix(outputs: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs: rows are the true class, columns the
    predicted one, as in `sklearn.metrics.confusion_matrix(y, pred, labels=range(K))`.

    Raises ValueError when a true or predicted class is not below `num_classes`.
    """
    c = _classes(outputs, targets)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, not {num_classes}")
    top = max(int(c.labels.max()), int(c.predictions.max()))
    if top >= num_classes:
        raise ValueError(f"class {top} occurs but num_classes is {num_classes}")
    return _confusion(c.labels, c.predictions, num_classes).astype(np.int64)


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of samples whose predicted class (argmax, the lowest index on ties; a sigmoid
    above 0.5) is the true one."""
    c = _classes(outputs, targets)
    return float(np.mean(c.predictions == c.labels))


def top_k_accuracy(outputs: np.ndarray, targets: np.ndarray, k: int = 5) -> float:
    """Fraction of samples whose true class is among the `k` highest scores.

    Ties rank the lower class index first, as `argmax` and `jax.lax.top_k` do, so that k=1
    equals `accuracy` (scikit-learn's `top_k_accuracy_score` breaks ties the other way; without
    ties the two agree). With k >= the number of classes every sample is a hit.
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, not {k}")
    c = _classes(outputs, targets)
    rows = np.arange(len(c.labels))
    own = c.scores[rows, c.labels][:, None]
    lower = np.arange(c.num_classes)[None, :] < c.labels[:, None]
    ahead = (c.scores > own) | ((c.scores == own) & lower)
    return float(np.mean(ahead.sum(axis=1) < k))


def _per_class(c: _Classes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted counts and true counts per class, and which classes occur
    (in the targets or the predictions)."""
    m = _confusion(c.labels, c.predictions, c.num_classes)
    tp, predicted, true = np.diag(m), m.sum(axis=0), m.sum(axis=1)
    return tp, predicted, true, (predicted + true) > 0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def precision(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged precision over the classes that occur in the targets or predictions; a
    class never predicted counts 0. Equals scikit-learn's
    `precision_score(average="macro", zero_division=0)`, binary outputs included."""
    tp, predicted, _, present = _per_class(_classes(outputs, targets))
    return float(np.mean(_ratio(tp, predicted)[present]))


def recall(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged recall over the classes that occur in the targets or predictions; a
    class predicted but absent from the targets counts 0. Equals scikit-learn's
    `recall_score(average="macro", zero_division=0)`."""
    tp, _, true, present = _per_class(_classes(outputs, targets))
    return float(np.mean(_ratio(tp, true)[present]))


def f1(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Macro-averaged F1 (the mean of per-class F1 = 2 TP / (2 TP + FP + FN), not the F1 of the
    macro precision and recall) over the classes that occur in the targets or predictions.
    Equals scikit-learn's `f1_score(average="macro", zero_division=0)`."""
    tp, predicted, true, present = _per_class(_classes(outputs, targets))
    return float(np.mean(_ratio(2.0 * tp, (predicted + true).astype(np.float64))[present]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def auc(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve of a binary output: a single sigmoid unit, or the score of
    column 1 of a 2-class softmax. Computed as the Mann-Whitney rank statistic with tied scores
    sharing their mean rank, which equals `sklearn.metrics.roc_auc_score`.

    Returns NaN when the targets hold one class only (the AUC is undefined; scikit-learn also
    returns NaN, with a warning). Raises ValueError for more than two classes (no multi-class
    average is defined here) and for NaN scores.
    """
    c = _classes(outputs, targets)
    if c.num_classes != 2:
        raise ValueError(f"auc needs a binary output (one sigmoid unit or 2 softmax columns); "
                         f"this one has {c.num_classes} classes")
    score = c.scores[:, 1]
    if np.isnan(score).any():
        raise ValueError("auc: the scores contain NaN")
    return _rank_auc(score, c.labels == 1)


def _rank_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The Mann-Whitney AUC of scores whose positives are `positive`; NaN with one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(_average_ranks(score)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _regression(outputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets as float64 (N, D). Integer labels against a vector output are
    one-hot encoded, as the regression losses do."""
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    _check_lengths(outputs, targets)
    n = len(outputs)
    pred = outputs.reshape(n, -1).astype(np.float64)
    if (targets.ndim < outputs.ndim and outputs.shape[-1] > 1
            and np.issubdtype(targets.dtype, np.integer)):
        k = outputs.shape[-1]
        if targets.min() < 0 or targets.max() >= k:
            raise ValueError(f"class labels range over [{targets.min()}, {targets.max()}] but "
                             f"the outputs have {k} values")
        true = np.eye(k)[targets].reshape(n, -1)
    elif targets.size == outputs.size:
        true = targets.reshape(n, -1).astype(np.float64)
    else:
        raise ValueError(f"targets of shape {targets.shape} do not match outputs of shape "
                         f"{outputs.shape}")
    return pred, true


def mae(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean absolute error over all values (equals scikit-learn's uniform average over
    outputs)."""
    pred, true = _regression(outputs, targets)
    return float(np.mean(np.abs(pred - true)))


def rmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Root of the mean squared error over all values: `sqrt(mean_squared_error(y, p))`. For
    several outputs this is not scikit-learn's `root_mean_squared_error`, which averages the
    per-output roots; for one output the two are equal."""
    pred, true = _regression(outputs, targets)
    return float(np.sqrt(np.mean(np.square(pred - true))))


def r2(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Coefficient of determination per output, uniformly averaged, as scikit-learn's
    `r2_score`: an output whose targets are constant scores 1 if predicted exactly, else 0.
    NaN for fewer than two samples (undefined; scikit-learn also returns NaN)."""
    pred, true = _regression(outputs, targets)
    if len(pred) < 2:
        return float("nan")
    residual = np.sum(np.square(true - pred), axis=0)
    total = np.sum(np.square(true - true.mean(axis=0)), axis=0)
    score = np.where(residual == 0, 1.0, 0.0)
    defined = total != 0
    score[defined] = 1.0 - residual[defined] / total[defined]
    return float(np.mean(score))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "top_k_accuracy": top_k_accuracy,
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "auc": auc,
    "mae": mae,
    "rmse": rmse,
    "r2": r2,
}


def binary_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of labels predicted right when each unit is its own sigmoid (above 0.5 is 1):
    the accuracy of a multi-label output, as Keras' `binary_accuracy`."""
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    _check_lengths(outputs, targets)
    if targets.size != outputs.size:
        raise ValueError(f"a multi-label output of shape {outputs.shape} needs one 0/1 target "
                         f"per unit; the targets have shape {targets.shape}")
    return float(np.mean((outputs.reshape(-1) > 0.5) == (targets.reshape(-1) > 0.5)))


def evaluate_predictions(outputs: np.ndarray, targets: np.ndarray, metrics: Sequence[str],
                         top_k: int = 5, multi_label: bool = False) -> dict[str, float]:
    """Each named metric of `outputs` against `targets` over the whole split, by name.

    `top_k` is the k of `top_k_accuracy`. `multi_label` (an output trained with binary
    cross-entropy) makes `accuracy` per label (`binary_accuracy`) rather than an argmax.
    Raises ValueError, listing the valid names, for an unknown metric (before computing any),
    and for outputs and targets that do not fit.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid metrics: "
                         f"{', '.join(METRICS)}")
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    result: dict[str, float] = {}
    for name in metrics:
        if name == "top_k_accuracy":
            result[name] = top_k_accuracy(outputs, targets, top_k)
        elif name == "accuracy" and multi_label:
            result[name] = binary_accuracy(outputs, targets)
        else:
            result[name] = METRICS[name](outputs, targets)
    return result
