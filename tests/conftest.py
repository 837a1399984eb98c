"""Shared fixtures: small models built here so the library's tests need nothing else."""

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TinyResNet(nn.Module):
    """Two basic residual blocks: enough to exercise Conv2d, BatchNorm and a classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.block_a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                     nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(8))
        self.down = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.block_b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
                                     nn.BatchNorm2d(16), nn.ReLU(),
                                     nn.Conv2d(16, 16, 3, padding=1, bias=False))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.block_a(x))
        x = torch.relu(self.down(x) + self.block_b(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny_resnet():
    return TinyResNet()


@pytest.fixture
def mlp():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 33), nn.ReLU(),
                         nn.Linear(33, 5))
