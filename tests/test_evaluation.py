"""compiler/train/evaluation.py against scikit-learn, and compiler/train/plots.py's PNG files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from nnspec.compiler.train import evaluation as ev
from nnspec.spec.schema import METRICS as SPEC_METRICS

skm = pytest.importorskip("sklearn.metrics")

CLASSIFIERS = ("accuracy", "precision", "recall", "f1")


def softmax_outputs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k)) * 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def sklearn_classification(name: str, y: np.ndarray, pred: np.ndarray) -> float:
    if name == "accuracy":
        return skm.accuracy_score(y, pred)
    fn = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
    return fn(y, pred, average="macro", zero_division=0)


# ---------------------------------------------------------------- the set of metrics


def test_every_spec_metric_is_implemented():
    assert set(ev.METRICS) == set(SPEC_METRICS)


def test_unknown_metric_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown metric.*'bogus'.*valid metrics: accuracy"):
        ev.evaluate_predictions(np.zeros((2, 3)), np.zeros(2, int), ["accuracy", "bogus"])


def test_evaluate_predictions_returns_each_metric_by_name():
    rng = np.random.default_rng(0)
    out, y = softmax_outputs(rng, 50, 4), rng.integers(0, 4, 50)
    got = ev.evaluate_predictions(out, y, ["accuracy", "top_k_accuracy", "f1"], top_k=2)
    assert list(got) == ["accuracy", "top_k_accuracy", "f1"]
    assert all(isinstance(v, float) for v in got.values())
    assert got["top_k_accuracy"] == ev.top_k_accuracy(out, y, 2)
    assert got["f1"] == ev.f1(out, y)


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3, 10])
def test_classification_metrics_match_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    out, y = softmax_outputs(rng, n, k), rng.integers(0, k, n)
    pred = out.argmax(axis=1)
    for name in CLASSIFIERS:
        assert ev.METRICS[name](out, y) == pytest.approx(sklearn_classification(name, y, pred),
                                                         abs=1e-12), name
    # One-hot targets read the same as labels.
    onehot = np.eye(k, dtype=np.float32)[y]
    for name in CLASSIFIERS:
        assert ev.METRICS[name](out, onehot) == ev.METRICS[name](out, y)


def test_perfect_predictions_score_one():
    y = np.array([0, 1, 2, 2, 1, 0, 3])
    out = np.eye(4)[y] * 0.9 + 0.025
    got = ev.evaluate_predictions(out, y, ["accuracy", "top_k_accuracy", "precision",
                                           "recall", "f1"], top_k=1)
    assert got == {"accuracy": 1.0, "top_k_accuracy": 1.0, "precision": 1.0, "recall": 1.0,
                   "f1": 1.0}


def test_a_class_never_predicted_counts_zero_precision():
    # Class 2 is in the targets but never predicted; class 3 is in neither (skipped).
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 1])
    out = np.eye(4)[pred]
    for name in ("precision", "recall", "f1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's zero-division warning
            want = sklearn_classification(name, y, pred)
        assert ev.METRICS[name](out, y) == pytest.approx(want, abs=1e-12), name
    # by hand: precision per class (0: 1/2, 1: 2/4, 2: 0) over 3 classes
    assert ev.precision(out, y) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_a_class_predicted_but_absent_from_targets_counts_zero_recall():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    out = np.eye(3)[pred]
    assert ev.recall(out, y) == pytest.approx(skm.recall_score(y, pred, average="macro",
                                                               zero_division=0))
    assert ev.recall(out, y) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_argmax_ties_pick_the_lowest_class():
    out = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4]])
    assert ev.accuracy(out, np.array([0, 1])) == 1.0
    assert ev.accuracy(out, np.array([1, 2])) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_top_k_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 10
    out, y = softmax_outputs(rng, 200, k), rng.integers(0, k, 200)
    for top in (1, 2, 5, 9, 10, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns for k >= number of classes
            want = skm.top_k_accuracy_score(y, out, k=top, labels=np.arange(k))
        assert ev.top_k_accuracy(out, y, top) == pytest.approx(want, abs=1e-12), top
    assert ev.top_k_accuracy(out, y, 1) == ev.accuracy(out, y)


def test_top_k_accuracy_ties_rank_lower_classes_first():
    out = np.array([[0.3, 0.3, 0.3, 0.1]])
    assert ev.top_k_accuracy(out, np.array([0]), 1) == 1.0
    assert ev.top_k_accuracy(out, np.array([1]), 1) == 0.0
    assert ev.top_k_accuracy(out, np.array([1]), 2) == 1.0
    assert ev.top_k_accuracy(out, np.array([2]), 2) == 0.0
    assert ev.top_k_accuracy(out, np.array([3]), 4) == 1.0
    with pytest.raises(ValueError, match="at least 1"):
        ev.top_k_accuracy(out, np.array([0]), 0)


@pytest.mark.parametrize("seed", range(4))
def test_sigmoid_outputs_read_as_two_classes(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(120).astype(np.float32)
    y = rng.integers(0, 2, 120)
    pred = (p > 0.5).astype(int)
    for shape in [(120,), (120, 1)]:
        for name in CLASSIFIERS:
            want = sklearn_classification(name, y, pred)
            assert ev.METRICS[name](p.reshape(shape), y) == pytest.approx(want, abs=1e-12)
            # float 0/1 targets shaped like the output read the same
            assert ev.METRICS[name](p.reshape(shape), y.astype(np.float32).reshape(shape)) == (
                ev.METRICS[name](p.reshape(shape), y))
    for k in (1, 2, 3):
        want = skm.top_k_accuracy_score(y, p, k=k) if k == 1 else 1.0
        assert ev.top_k_accuracy(p[:, None], y, k) == pytest.approx(want)


def test_sigmoid_threshold_is_strictly_above_half():
    p = np.array([[0.5], [0.51], [0.49]])
    assert ev.accuracy(p, np.array([0, 1, 0])) == 1.0
    np.testing.assert_array_equal(ev.confusion_matrix(p, np.array([0, 1, 0]), 2),
                                  [[2, 0], [0, 1]])


def test_sequence_outputs_count_every_position():
    rng = np.random.default_rng(3)
    out = softmax_outputs(rng, 5 * 7, 4).reshape(5, 7, 4)
    y = rng.integers(0, 4, (5, 7))
    flat_out, flat_y = out.reshape(-1, 4), y.reshape(-1)
    for name in ("accuracy", "precision", "recall", "f1"):
        assert ev.METRICS[name](out, y) == ev.METRICS[name](flat_out, flat_y)


def test_float_labels_must_be_whole_numbers():
    out = np.eye(3)[[0, 1, 2]]
    assert ev.accuracy(out, np.array([0.0, 1.0, 2.0])) == 1.0
    with pytest.raises(ValueError, match="whole numbers"):
        ev.accuracy(out, np.array([0.0, 0.5, 2.0]))


@pytest.mark.parametrize("out, y, match", [
    (np.zeros((3, 4)), np.zeros(2, int), "3 outputs but 2 targets"),
    (np.zeros((0, 4)), np.zeros(0, int), "no samples"),
    (np.zeros((3, 4)), np.array([0, 1, 4]), r"range over \[0, 4\] but the outputs have 4"),
    (np.zeros((3, 4)), np.array([-1, 1, 2]), "range over"),
    (np.zeros((3, 4)), np.zeros((3, 2)), "fit neither"),
    (np.zeros((3, 1)), np.zeros(4), "3 outputs but 4 targets"),
    (np.zeros((3, 1)), np.zeros((3, 2)), "single-unit output"),
])
def test_mismatched_inputs_raise(out, y, match):
    with pytest.raises(ValueError, match=match):
        ev.accuracy(out, y)


# ---------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    out, y = softmax_outputs(rng, 150, 5), rng.integers(0, 4, 150)  # class 4: never true
    got = ev.confusion_matrix(out, y, 6)
    want = skm.confusion_matrix(y, out.argmax(1), labels=np.arange(6))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and got.shape == (6, 6)


def test_confusion_matrix_of_a_sigmoid_and_one_hot_targets():
    p = np.array([0.9, 0.2, 0.7, 0.4, 0.6])
    y = np.array([1, 0, 0, 1, 1])
    np.testing.assert_array_equal(ev.confusion_matrix(p, y, 2),
                                  skm.confusion_matrix(y, (p > 0.5).astype(int)))
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    onehot = np.array([[0, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(ev.confusion_matrix(out, onehot, 2), [[0, 1], [1, 1]])


def test_confusion_matrix_rejects_classes_beyond_num_classes():
    with pytest.raises(ValueError, match="class 2 occurs but num_classes is 2"):
        ev.confusion_matrix(np.eye(3), np.array([0, 1, 2]), 2)


# ---------------------------------------------------------------- auc


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = rng.random(n).astype(np.float32)
    want = skm.roc_auc_score(y, p)
    assert ev.auc(p, y) == pytest.approx(want, abs=1e-12)
    assert ev.auc(p[:, None], y[:, None].astype(np.float32)) == pytest.approx(want, abs=1e-12)
    # a 2-column softmax scores with column 1
    two = np.stack([1 - p, p], axis=1)
    assert ev.auc(two, y) == pytest.approx(want, abs=1e-12)
    assert ev.auc(two, np.eye(2)[y]) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_auc_with_tied_scores_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    y[:2] = [0, 1]
    p = rng.integers(0, 5, 300) / 4.0  # five distinct scores: many ties across classes
    assert ev.auc(p, y) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)


def test_auc_edge_values():
    y = np.array([0, 0, 1, 1])
    assert ev.auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert ev.auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert ev.auc(np.full(4, 0.5), y) == 0.5  # all tied: chance


def test_auc_with_one_class_present_is_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = skm.roc_auc_score([1, 1, 1], [0.2, 0.5, 0.9])
    assert np.isnan(want)  # scikit-learn's own answer
    assert np.isnan(ev.auc(np.array([0.2, 0.5, 0.9]), np.array([1, 1, 1])))
    assert np.isnan(ev.auc(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 0])))


def test_auc_rejects_multiclass_and_nan():
    with pytest.raises(ValueError, match="binary output.*3 classes"):
        ev.auc(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        ev.auc(np.array([0.2, np.nan, 0.9]), np.array([0, 1, 1]))


# ---------------------------------------------------------------- regression


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 2)])
def test_regression_metrics_match_sklearn(seed, shape):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    y = rng.normal(size=(n, *shape)) * 3 + 1
    out = (y + rng.normal(size=y.shape)).astype(np.float32)
    y2, out2 = y.reshape(n, -1), out.reshape(n, -1).astype(np.float64)
    got = ev.evaluate_predictions(out, y, ["mae", "rmse", "r2"])
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y2, out2), rel=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y2, out2)), rel=1e-12)
    assert got["r2"] == pytest.approx(skm.r2_score(y2, out2), rel=1e-10, abs=1e-12)
    if y2.shape[1] == 1:  # one output: sklearn's RMSE is the same
        assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y2, out2), rel=1e-12)


def test_r2_of_constant_targets_follows_sklearn():
    y = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    exact = y.copy()
    off = y + np.array([[0.5, 0.1]])
    for out in (exact, off):
        assert ev.r2(out, y) == pytest.approx(skm.r2_score(y, out))
    assert ev.r2(exact, y) == 1.0
    assert ev.r2(off[:, :1], y[:, :1]) == 0.0


def test_r2_of_one_sample_is_nan():
    assert np.isnan(ev.r2(np.array([1.0]), np.array([2.0])))


def test_regression_against_integer_labels_one_hot_encodes_them():
    out = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    y = np.array([0, 1])
    onehot = np.eye(3)[y]
    assert ev.mae(out, y) == pytest.approx(skm.mean_absolute_error(onehot, out))
    assert ev.rmse(out, y) == pytest.approx(np.sqrt(skm.mean_squared_error(onehot, out)))


def test_regression_shape_mismatch_raises():
    with pytest.raises(ValueError, match="do not match"):
        ev.mae(np.zeros((4, 2)), np.zeros((4, 3)))


# ---------------------------------------------------------------- plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plots():
    pytest.importorskip("matplotlib")
    from nnspec.compiler.train import plots

    return plots


def assert_png(path) -> None:
    import matplotlib.image

    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


HISTORY = [
    {"epoch": e, "loss": 2.0 / e, "accuracy": 0.5 + 0.04 * e, "top_k_accuracy": 0.8,
     "f1": 0.4 + 0.05 * e, "mae": 1.0 / e, "val_loss": 2.2 / e, "val_accuracy": 0.45 + 0.04 * e,
     "val_top_k_accuracy": 0.75, "val_f1": 0.35 + 0.05 * e, "val_mae": 1.1 / e, "seconds": 0.1}
    for e in range(1, 11)
]


def test_plot_curves_writes_a_png(plots, tmp_path):
    path = tmp_path / "curves.png"
    plots.plot_curves(HISTORY, path)
    assert_png(path)
    assert leftovers(tmp_path) == ["curves.png"]


def test_plot_curves_groups_series_by_family(plots):
    extra = {"epoch": 11, "head_loss": np.float32(1.0), "val_r2": 0.5, "flag": True,
             "note": "text"}
    families = plots._series(HISTORY + [extra])
    assert families == {"loss": ["loss", "head_loss"],
                        "accuracy": ["accuracy", "top_k_accuracy"],
                        "other": ["f1", "mae", "r2"]}


def test_plot_curves_without_validation_or_with_one_epoch(plots, tmp_path):
    plots.plot_curves([{"epoch": 1, "loss": 0.7}], tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    plots.plot_curves([{"loss": 0.7, "accuracy": 0.5}, {"loss": 0.6, "accuracy": 0.6}],
                      tmp_path / "two.png")
    assert_png(tmp_path / "two.png")


def test_plot_curves_rejects_empty_history_and_writes_nothing(plots, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plots.plot_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="no metric"):
        plots.plot_curves([{"epoch": 1, "seconds": 2.0}], tmp_path / "c.png")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("labels", [None, ["cat", "dog", "bird"]])
def test_plot_confusion_writes_a_png(plots, tmp_path, labels):
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    path = tmp_path / "confusion.png"
    plots.plot_confusion(matrix, labels, path, title="test split")
    assert_png(path)
    assert leftovers(tmp_path) == ["confusion.png"]


def test_plot_confusion_of_many_classes_and_of_an_all_zero_matrix(plots, tmp_path):
    rng = np.random.default_rng(0)
    plots.plot_confusion(rng.integers(0, 50, (31, 31)), None, tmp_path / "big.png")
    assert_png(tmp_path / "big.png")
    plots.plot_confusion(np.zeros((2, 2), int), ["no", "yes"], tmp_path / "zero.png")
    assert_png(tmp_path / "zero.png")


def test_plot_confusion_rejects_bad_input_and_keeps_the_old_file(plots, tmp_path):
    path = tmp_path / "confusion.png"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="square"):
        plots.plot_confusion(np.zeros((2, 3)), None, path)
    with pytest.raises(ValueError, match="2 labels for a 3x3"):
        plots.plot_confusion(np.eye(3), ["a", "b"], path)
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["confusion.png"]


def test_a_missing_folder_is_created(plots, tmp_path):
    # nnspec._io.write_bytes creates the parent folders of a run's files.
    path = tmp_path / "new" / "sub" / "confusion.png"
    plots.plot_confusion(np.eye(2, dtype=int), None, path)
    assert_png(path)


def test_an_unwritable_path_raises_and_leaves_nothing(plots, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(OSError):  # the "folder" is a file
        plots.plot_curves(HISTORY[:2], blocker / "curves.png")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError):  # a folder where the file should go
        plots.plot_confusion(np.eye(2, dtype=int), None, tmp_path / "taken.png")
    assert leftovers(tmp_path) == ["file", "taken.png"]
    assert leftovers(tmp_path / "taken.png") == []


def test_a_failed_write_leaves_no_temporary_file(plots, tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_curves([{"epoch": 1, "loss": 0.5}], tmp_path / "curves.png")
    assert leftovers(tmp_path) == []


def test_neither_module_imports_jax():
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    code = ("import sys\nimport nnspec.compiler.train.evaluation, nnspec.compiler.train.plots\n"
            "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules)\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_multi_label_accuracy_is_per_label_not_an_argmax():
    """Three independent sigmoid labels: 5 of 6 labels right, though the argmax of the
    outputs matches the argmax of the targets in neither sample."""
    from nnspec.compiler.train.evaluation import evaluate_predictions

    probs = np.array([[0.8, 0.9, 0.1], [0.2, 0.7, 0.6]])
    targets = np.array([[1, 1, 0], [0, 0, 1]])
    assert evaluate_predictions(probs, targets, ["accuracy"], multi_label=True) == {
        "accuracy": pytest.approx(5 / 6)}
    assert evaluate_predictions(probs, targets, ["accuracy"]) == {"accuracy": 0.0}
