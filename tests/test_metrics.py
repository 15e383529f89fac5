"""Detection metrics and accuracy (turn_core.metrics), against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from turn_core.metrics import accuracy, auroc, detection_metrics, precision_recall_at


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    return None

# --------------------------------------------------------------------------------- metrics
def test_detection_metrics_hand_computed():
    is_noisy = [1, 1, 1, 0, 0, 0, 0, 0]
    flagged = [1, 1, 0, 1, 0, 0, 0, 0]       # tp 2, fp 1, fn 1
    suspicion = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05]
    m = detection_metrics(is_noisy, flagged, suspicion)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert (m["n_flagged"], m["n_noisy"], m["n"]) == (3, 3, 8)
    # positives 0.9, 0.8, 0.3 vs negatives 0.7 0.2 0.1 0.4 0.05: pairs won 5 + 5 + 3 = 13 of 15
    assert m["auroc"] == pytest.approx(13 / 15)


def test_detection_metrics_nothing_flagged_and_no_suspicion():
    m = detection_metrics([1, 0, 0], [0, 0, 0])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert "auroc" not in m


def test_auroc_ties_count_half_and_single_class_is_nan():
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 0, 0], [0.6, 0.6, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)
    assert np.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))


def test_precision_recall_at_threshold():
    m = precision_recall_at([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1], 0.5)
    assert (m["precision"], m["recall"], m["n_flagged"]) == (0.5, 0.5, 2)


def test_accuracy_hand_values_and_empty_is_nan():
    assert accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert accuracy(np.array([0, 0]), np.array([1, 1])) == 0.0
    assert np.isnan(accuracy([], []))
