"""Top-k accuracy and the classifier evaluator against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsebench.metrics.classification import accuracy, evaluate_classifier, top_k_accuracy

# 4 examples, 6 classes; the label's rank among the logits is 1, 3, 6 and 5.
LOGITS = torch.tensor(
    [
        [0.1, 0.5, 0.2, 0.0, -0.1, -0.2],  # label 1 is the largest: rank 1
        [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # label 2: rank 3
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0: rank 6
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: rank 5
    ]
)
LABELS = torch.tensor([1, 2, 0, 4])


def test_top_k_by_hand() -> None:
    assert top_k_accuracy(LOGITS, LABELS, 1) == 0.25
    assert top_k_accuracy(LOGITS, LABELS, 3) == 0.5
    assert top_k_accuracy(LOGITS, LABELS, 5) == 0.75
    assert top_k_accuracy(LOGITS, LABELS, 6) == 1.0


def test_accuracy_drops_k_beyond_classes() -> None:
    assert accuracy(LOGITS, LABELS) == {"top1": 0.25, "top5": 0.75}
    three = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert accuracy(three, torch.tensor([0, 1])) == {"top1": 0.5}


def test_errors() -> None:
    with pytest.raises(ValueError, match="k=7"):
        top_k_accuracy(LOGITS, LABELS, 7)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        top_k_accuracy(LOGITS, LABELS[:3])
    with pytest.raises(ValueError, match="empty"):
        top_k_accuracy(LOGITS[:0], LABELS[:0])


class Passthrough(nn.Module):
    """Returns its input as logits and records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x * self.scale


def test_evaluate_classifier_averages_over_examples() -> None:
    model = Passthrough()
    # Batches of 3 and 1: per-example mean top-1 is 1/4; a mean of batch means would be 1/6.
    batches = [(LOGITS[:3], LABELS[:3]), (LOGITS[3:], LABELS[3:])]
    result = evaluate_classifier(model, batches)
    assert result["top1"] == pytest.approx(0.25)
    assert result["top5"] == pytest.approx(0.75)
    assert result["count"] == 4
    # Cross-entropy by hand: mean of logsumexp(row) - row[label].
    expected = sum(
        math.log(sum(math.exp(v) for v in row)) - row[label]
        for row, label in zip(LOGITS.tolist(), LABELS.tolist(), strict=True)
    ) / 4
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert model.modes == [False, False] and model.training  # eval during, train restored


def test_evaluate_classifier_on_dataloader() -> None:
    data = torch.utils.data.TensorDataset(LOGITS, LABELS)
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    assert evaluate_classifier(nn.Identity(), loader, ks=(1, 3))["top3"] == 0.5
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(LOGITS[:0], LABELS[:0]))
    with pytest.raises(ValueError, match="no examples"):
        evaluate_classifier(nn.Identity(), empty)
