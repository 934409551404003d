"""`SplitMetrics` (batch by batch) against `evaluate_predictions` (the whole split at once):
the same outputs through both, split into batches of uneven sizes."""

from __future__ import annotations

import numpy as np
import pytest

from nnspec.compiler.train.evaluation import evaluate_predictions
from nnspec.compiler.train.split_metrics import SplitMetrics

COUNTING = ["accuracy", "top_k_accuracy", "precision", "recall", "f1"]


def _softmax(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    e = np.exp(rng.normal(size=(n, k)) * 2)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _batched(outputs: np.ndarray, targets: np.ndarray, metrics: list[str], seed: int,
             **options: object) -> dict[str, float]:
    tally = SplitMetrics(metrics, **options)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(outputs)), 6, False))
    for out, y in zip(np.split(outputs, cuts), np.split(targets, cuts), strict=True):
        tally.update(out, y)
    return tally.result()


def _case(name: str, rng: np.random.Generator) -> tuple:
    n = 997
    if name == "softmax10":
        return _softmax(rng, n, 10), rng.integers(0, 10, n), COUNTING, {"top_k": 3}
    if name == "softmax2_auc":
        return _softmax(rng, n, 2), rng.integers(0, 2, n), [*COUNTING, "auc"], {"top_k": 1}
    if name == "sigmoid_auc_ties":  # rounded scores: tied ranks across batches
        p = np.round(rng.random((n, 1)), 1).astype(np.float32)
        return p, rng.integers(0, 2, (n, 1)), ["accuracy", "auc", "f1"], {}
    if name == "one_hot_sequence":
        out = _softmax(rng, n * 3, 4).reshape(n, 3, 4)
        return out, np.eye(4)[rng.integers(0, 4, (n, 3))], COUNTING, {"top_k": 2}
    if name == "multi_label":
        return (rng.random((n, 5)).astype(np.float32), rng.integers(0, 2, (n, 5)),
                ["accuracy"], {"multi_label": True})
    if name == "regression":
        y = rng.normal(loc=1e4, size=(n, 3))  # a large mean: the case naive sums cancel
        return y + rng.normal(size=(n, 3)), y, ["mae", "rmse", "r2"], {}
    raise KeyError(name)


CASES = ["softmax10", "softmax2_auc", "sigmoid_auc_ties", "one_hot_sequence", "multi_label",
         "regression"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", CASES)
def test_batch_by_batch_equals_the_whole_split(case, seed):
    outputs, targets, metrics, options = _case(case, np.random.default_rng(seed))
    whole = evaluate_predictions(outputs, targets, metrics, **options)
    batched = _batched(outputs, targets, metrics, seed, **options)
    assert list(batched) == list(whole)
    for name in metrics:
        if name in ("mae", "rmse", "r2"):
            assert batched[name] == pytest.approx(whole[name], rel=1e-12, abs=1e-12), name
        else:  # counts and ranks: exactly the same number
            assert batched[name] == whole[name], name


def test_constant_targets_and_errors_follow_the_whole_split():
    y = np.ones((10, 2))
    out = np.stack([np.ones(10), np.linspace(0, 2, 10)], axis=1)
    assert _batched(out, y, ["r2"], 0) == evaluate_predictions(out, y, ["r2"])  # [1, 0] -> 0.5
    with pytest.raises(ValueError, match="unknown metric.*'bogus'.*valid metrics: accuracy"):
        SplitMetrics(["accuracy", "bogus"])
    with pytest.raises(ValueError, match="no samples to evaluate"):
        SplitMetrics(["accuracy"]).result()
    tally = SplitMetrics(["auc"])
    with pytest.raises(ValueError, match="auc needs a binary output.*3 classes"):
        tally.update(np.full((2, 3), 1 / 3), np.array([0, 1]))
    tally = SplitMetrics(["accuracy"])
    tally.update(np.full((2, 3), 1 / 3), np.array([0, 1]))
    with pytest.raises(ValueError, match="a batch has 4 classes, the ones before 3"):
        tally.update(np.full((2, 4), 1 / 4), np.array([0, 1]))
