"""The metrics of an accuracy matrix, against values worked out by hand."""

import pytest

from train.metrics.continual import plot_accuracy_matrix, summary

MATRIX = [[0.9], [0.6, 0.8], [0.3, 0.7, 0.95]]


def test_metrics_of_a_hand_worked_matrix(tmp_path):
    metrics = summary(MATRIX)
    assert metrics["average_accuracy"] == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert metrics["average_incremental_accuracy"] == pytest.approx((0.9 + 0.7 + 0.65) / 3)
    # task 1: best 0.9 → 0.3; task 2: best 0.8 → 0.7
    assert metrics["forgetting"] == pytest.approx((0.6 + 0.1) / 2)
    assert metrics["bwt"] == pytest.approx(((0.3 - 0.9) + (0.7 - 0.8)) / 2)
    assert summary([[0.5]]) == {
        "average_accuracy": 0.5,
        "average_incremental_accuracy": 0.5,
        "forgetting": 0.0,
        "bwt": 0.0,
    }
    plot_accuracy_matrix(MATRIX, "test", tmp_path / "matrix.png")
    assert (tmp_path / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_forgetting_counts_the_best_accuracy_not_the_first():
    # the first task improves after the second is learned, then drops
    assert summary([[0.5], [0.7, 0.9], [0.2, 0.9, 1.0]])["forgetting"] == pytest.approx(0.25)
