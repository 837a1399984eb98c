"""The resumable order in which a task hands out its training batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["BatchOrder"]


class BatchOrder:
    """Hands out the global batches of an epoch-based order, resumable from (epoch, position).

    ``make_epoch(epoch)`` returns that epoch's list of index lists; it must depend only on the
    epoch (and a seed), so a resumed run sees exactly the same batches. Under several processes
    each rank takes every ``world``-th example of the global batch.
    """

    def __init__(self, make_epoch: Callable[[int], list[list[int]]], rank: int = 0,
                 world: int = 1):
        self.make_epoch = make_epoch
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._batches: list[list[int]] | None = None

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        if self._batches is None:
            self._batches = self.make_epoch(self.epoch)
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self.make_epoch(self.epoch)
        batch = self._batches[self.position]
        self.position += 1
        return batch[self.rank :: self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = None
