import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bloodml.evaluation.calibration import expected_calibration_error, fit_temperature, reliability_bins
from bloodml.evaluation.metrics import bootstrap_interval, classification_metrics, wilson_interval


def _fixed_predictions(n=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * (rng.random(n)[:, None] < 0.7)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_multiclass_metrics_match_scikit_learn():
    y, p = _fixed_predictions()
    pred = p.argmax(1)
    m = classification_metrics(y, p, class_names=["a", "b", "c"], n_boot=200)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["loss"] == pytest.approx(skm.log_loss(y, p))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred)
    assert [m["precision_a"], m["recall_b"], m["f1_c"]] == pytest.approx([precision[0], recall[1], f1[2]])
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"]
    assert "roc_auc" not in m


def test_binary_metrics_at_a_threshold():
    y, p = _fixed_predictions(80, 2, seed=3)
    m = classification_metrics(y, p, positive=1, threshold=0.7, n_boot=200)
    pred = (p[:, 1] >= 0.7).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["roc_auc_ci_low"] < m["roc_auc"] < m["roc_auc_ci_high"]
    flipped = classification_metrics(1 - y, p[:, ::-1], positive=0, threshold=0.7, n_boot=100)
    assert flipped["sensitivity"] == pytest.approx(m["sensitivity"])  # the positive class is honoured


def test_wilson_interval_known_values():
    assert wilson_interval(9, 10) == pytest.approx((0.5958, 0.9821), abs=1e-4)
    low, high = wilson_interval(41, 45)  # ~90 % of 45 test images, as in the issue
    assert (round(low, 2), round(high, 2)) == (0.79, 0.96)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_constant_predictor_and_its_intervals():
    y = np.array([0] * 30 + [1] * 10 + [2] * 5)
    p = np.tile([0.8, 0.15, 0.05], (len(y), 1))  # always predicts the majority class
    m = classification_metrics(y, p, n_boot=300)
    assert m["accuracy"] == pytest.approx(30 / 45)
    assert (m["accuracy_ci_low"], m["accuracy_ci_high"]) == pytest.approx(wilson_interval(30, 45))
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy_ci_low"] == pytest.approx(1 / 3) and m["balanced_accuracy_ci_high"] == pytest.approx(1 / 3)
    assert m["mcc"] == 0 and m["mcc_ci_low"] == 0 and m["mcc_ci_high"] == 0


def test_bootstrap_is_seeded():
    y, p = _fixed_predictions()
    stat = lambda t, s: float((s.argmax(1) == t).mean())  # noqa: E731
    assert bootstrap_interval(stat, y, p, 300, seed=1) == bootstrap_interval(stat, y, p, 300, seed=1)


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    # bin (0.8,0.9]: conf 0.9, acc 1.0 (2 images); bin (0.5,0.6]: conf 0.6, acc 0.5 (2 images)
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    assert sum(row[2] for row in reliability_bins(y, p)) == 4


def test_temperature_scaling_softens_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (200,))
    logits = torch.randn(200, 3) * 0.5 + 1.5 * torch.nn.functional.one_hot(labels, 3)
    logits[:60] = logits[:60].roll(1, dims=1)  # 30 % confidently wrong
    temperature = fit_temperature(logits * 5, labels)
    assert temperature > 2
    before = torch.nn.functional.cross_entropy(logits * 5, labels)
    after = torch.nn.functional.cross_entropy(logits * 5 / temperature, labels)
    assert after < before


def test_fast_bootstrap_statistics_equal_scikit_learn_even_with_missing_classes():
    from bloodml.evaluation.metrics import (balanced_accuracy_from, confusion_counts, macro_f1_from, mcc_from,
                                            roc_auc_fast)
    import warnings

    rng = np.random.default_rng(5)
    for trial in range(40):
        k = int(rng.integers(2, 5))
        n = int(rng.integers(3, 30))
        y = rng.integers(0, k, n)
        pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
        cm = confusion_counts(y, pred, k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert balanced_accuracy_from(cm) == pytest.approx(skm.balanced_accuracy_score(y, pred))
            assert macro_f1_from(cm) == pytest.approx(skm.f1_score(y, pred, labels=range(k), average="macro",
                                                                   zero_division=0))
            assert mcc_from(cm) == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-12)
        scores = np.round(rng.random(n), 1)  # ties
        if 0 < (y == 0).sum() < n:
            assert roc_auc_fast(y == 0, scores) == pytest.approx(skm.roc_auc_score(y == 0, scores))


def test_intervals_resample_groups_not_images():
    """Ten identical cells of one patient are one case, not ten: the intervals of a dataset where every group is
    10 copies of one image equal those of the same dataset with one image per group (to bootstrap noise), and
    are much wider than an image-level bootstrap would claim."""
    rng = np.random.default_rng(3)
    n = 40
    truth = rng.integers(0, 2, n)
    probabilities = np.eye(2)[truth] * 0.25 + rng.random((n, 2))  # a weak classifier: about 70 % right
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    single = classification_metrics(truth, probabilities, n_boot=4000, seed=1, groups=np.arange(n))
    tenfold = classification_metrics(np.repeat(truth, 10), np.repeat(probabilities, 10, axis=0), n_boot=4000, seed=2,
                                     groups=np.repeat(np.arange(n), 10))
    naive = classification_metrics(np.repeat(truth, 10), np.repeat(probabilities, 10, axis=0), n_boot=4000, seed=2)
    assert single["ci_groups"] == tenfold["ci_groups"] == 40 and naive["ci_groups"] == 0
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "roc_auc", "sensitivity", "specificity"):
        width = lambda m: m[f"{metric}_ci_high"] - m[f"{metric}_ci_low"]  # noqa: E731
        assert width(tenfold) == pytest.approx(width(single), rel=0.15, abs=0.02), metric
        assert width(naive) < 0.5 * width(tenfold), metric
