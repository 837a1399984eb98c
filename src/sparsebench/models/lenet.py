"""LeNet-300-100 and LeNet-5 (Caffe variant): the small-task models of the VD and L0 papers.

Both take ``(N, in_channels, image_size, image_size)`` images (28x28x1 by default, as MNIST and
Fashion-MNIST) and return ``(N, num_classes)`` logits.

- LeNet-300-100 (LeCun et al. 1998): 784-300-100-10 fully connected, ReLU; 266,610 parameters.
- LeNet-5-Caffe (Molchanov et al. 2017, Louizos et al. 2018): conv 20@5x5, maxpool 2, conv 50@5x5,
  maxpool 2, fc 500, fc 10; 431,080 parameters. Caffe's own prototxt has no nonlinearity after the
  convolutions, but both papers' code puts a ReLU there, and so do we.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.models import _checks


class LeNet300100(nn.Module):
    """LeNet-300-100: a three-layer perceptron with hidden widths 300 and 100.

    ``width`` narrows it for "small dense" comparisons: hidden widths ``width`` and
    ``max(1, width // 3)`` (300 gives the original 300 and 100).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 width: int = 300) -> None:
        super().__init__()
        _checks.positive_int("num_classes", num_classes)
        _checks.positive_int("in_channels", in_channels)
        _checks.positive_int("image_size", image_size)
        _checks.positive_int("width", width)
        second = max(1, width // 3)
        self.fc1 = nn.Linear(in_channels * image_size * image_size, width)
        self.fc2 = nn.Linear(width, second)
        self.fc3 = nn.Linear(second, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits of shape ``(N, num_classes)`` for images ``x`` of shape (N, C, H, W)."""
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 in the Caffe layout used by the sparse VD and L0 papers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        _checks.positive_int("num_classes", num_classes)
        _checks.positive_int("in_channels", in_channels)
        _checks.positive_int("image_size", image_size)
        # Two valid 5x5 convolutions, each followed by a 2x2 max-pool.
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size must be at least 14 for LeNet-5, got {image_size}.")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits of shape ``(N, num_classes)`` for images ``x`` of shape (N, C, H, W)."""
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # (N, 20, 12, 12) at 28x28
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # (N, 50, 4, 4) at 28x28
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
