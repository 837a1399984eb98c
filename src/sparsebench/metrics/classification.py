"""Classification accuracy: top-1 and top-k from logits, and a model-over-DataLoader evaluator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["accuracy", "evaluate_classifier", "top_k_accuracy"]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits, "
            f"got {tuple(labels.shape)}"
        )


def _correct_counts(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """Return, for each k, how many rows have their label among the k highest logits."""
    _check(logits, labels)
    num_classes = logits.shape[1]
    for k in ks:
        if not 1 <= k <= num_classes:
            raise ValueError(f"k={k} must be between 1 and the number of classes ({num_classes})")
    if logits.shape[0] == 0:
        return [0 for _ in ks]
    top = logits.topk(max(ks), dim=1).indices  # (N, max k), best first
    hits = top.eq(labels.view(-1, 1).to(top.device))
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Return the fraction (0–1) of rows whose label is among the ``k`` highest logits.

    Args:
        logits: ``(N, C)`` scores (or probabilities: only their order matters).
        labels: ``(N,)`` integer class labels.
        k: 1 for top-1 accuracy, 5 for top-5, ... (1 ≤ k ≤ C).

    Raises:
        ValueError: shapes disagree, ``N`` is 0, or ``k`` is outside ``[1, C]``.
    """
    if logits.dim() == 2 and logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined (N = 0)")
    return _correct_counts(logits, labels, [k])[0] / logits.shape[0]


def accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Return ``{"top1": ..., "top5": ...}`` (fractions 0–1) for each ``k`` the classes allow.

    A ``k`` larger than the number of classes is left out (top-5 of a 3-class task means nothing).
    """
    usable = [k for k in ks if k <= logits.shape[-1]]
    if logits.dim() == 2 and logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined (N = 0)")
    counts = _correct_counts(logits, labels, usable)
    return {f"top{k}": c / logits.shape[0] for k, c in zip(usable, counts, strict=True)}


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ks: Sequence[int] = (1, 5),
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` over a DataLoader (or any iterable of ``(inputs, labels)``).

    The model is put in eval mode for the pass and its previous mode restored afterwards.

    Args:
        model: maps ``(B, ...)`` inputs to ``(B, C)`` logits.
        batches: the evaluation data.
        ks: which top-k accuracies to report; those above the class count are left out.
        device: where to run; default the device of the model's first parameter (CPU if none).

    Returns:
        ``{"top1": float, "top5": float (if C ≥ 5), "loss": mean cross-entropy, "count": N}``,
        accuracies as fractions in [0, 1], averaged over examples (not over batches).

    Raises:
        ValueError: the data is empty.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    totals: dict[int, int] = {}
    loss_sum, count = 0.0, 0
    usable: list[int] | None = None
    try:
        for inputs, labels in batches:
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs)
            if usable is None:
                usable = [k for k in ks if k <= logits.shape[-1]]
                totals = dict.fromkeys(usable, 0)
            for k, c in zip(usable, _correct_counts(logits, labels, usable), strict=True):
                totals[k] += c
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            count += labels.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_classifier got no examples")
    result = {f"top{k}": totals[k] / count for k in totals}
    result["loss"] = loss_sum / count
    result["count"] = float(count)
    return result
