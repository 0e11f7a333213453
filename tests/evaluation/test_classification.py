"""Classification metrics: AUC, ROC, confusion matrix, balanced accuracy and bootstrap intervals by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.evaluation.classification import bootstrap_auc, classification_metrics, roc_auc, roc_curve


def test_auc_by_hand_with_ties_and_against_pair_counting() -> None:
    pos = np.array([False, False, True, True])
    assert roc_auc(pos, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert roc_auc(np.array([False, True]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(s[y], s[~y])]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))
    fpr, tpr = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))  # the trapezoid area counts ties as one half


def test_confusion_balanced_accuracy_and_per_class() -> None:
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    probs = np.array([[.8, .1, .1], [.7, .2, .1], [.2, .7, .1], [.6, .3, .1], [.1, .8, .1], [.1, .3, .6],
                      [.1, .1, .8], [.2, .2, .6]])
    m = classification_metrics(y, probs, ["a", "b", "c"], n_bootstrap=200)
    assert m.confusion == ((3, 1, 0), (0, 1, 1), (0, 0, 2))
    assert m.accuracy == pytest.approx(6 / 8)
    assert m.balanced_accuracy == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    b = m.per_class[1]
    assert (b.sensitivity, b.specificity) == pytest.approx((1 / 2, 5 / 6))
    assert m.per_class[2].auc == pytest.approx((11 + 0.5) / 12)  # 12 pairs, one tie (0.6 vs 0.6)
    assert m.auc == pytest.approx(np.mean([c.auc for c in m.per_class]))
    with pytest.raises(InputError, match="expected"):
        classification_metrics(y, probs[:, :2], ["a", "b", "c"])


def test_binary_auc_interval_is_seeded_and_holds_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(60) < 0.5).astype(int)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 60), 0, 1)
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), ["absent", "present"], n_bootstrap=500, seed=3)
    assert m.auc_ci[0] < m.auc < m.auc_ci[1] and m.bootstrap_used == 500
    assert bootstrap_auc(y == 1, p1, 500, 3)[:2] == pytest.approx(m.auc_ci)
    perfect = bootstrap_auc(np.array([False] * 5 + [True] * 5), np.arange(10.0), 100)
    assert perfect[:2] == (1.0, 1.0)
