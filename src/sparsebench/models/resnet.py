"""ResNets: ResNet-50 exactly as in the study, plus small-image and reduced-width variants.

ResNet-50 here is "ResNet v1.5" (He et al. 2016 as implemented in the reference code the study
used): bottleneck blocks 3-4-6-3 with expansion 4, the stride on the 3x3 convolution, batch norm
after every convolution, projection (1x1 conv + BN) shortcuts where the shape changes, and a 7x7
stride-2 stem followed by a 3x3 stride-2 max-pool. With 1000 classes it has 25,557,032 parameters.
Module names follow the reference layout (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0``, ``fc``), so state dicts of that layout load unchanged and glob patterns
written for it (``layer*.conv*``) select the same layers.

Options for small images and CPU budgets:

- ``stem="cifar"``: a 3x3 stride-1 convolution and no max-pool, for 28x28 and 32x32 inputs (the
  ImageNet stem would shrink a 28x28 image to 7x7 before the first block).
- ``in_channels``: 1 for MNIST / Fashion-MNIST.
- ``width``: channels of the stem and of the first stage (64 in the paper); stage ``i`` has
  ``width * 2**i`` channels before expansion.
- ``layers``: blocks per stage; its length is the number of stages (three for ResNet-20).
- ``zero_init_residual``: start each block's last BN with gamma = 0, so every block starts as the
  identity (Goyal et al. 2017); off by default, as in the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from sparsebench.models import _checks

BlockName = Literal["basic", "bottleneck"]
StemName = Literal["imagenet", "cifar"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34, ResNet-20)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """Returns the BN whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``relu(F(x) + shortcut(x))``, of shape (N, planes, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """Returns the BN whose output is added to the shortcut (zeroed by zero_init_residual)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns relu(F(x) + shortcut(x)), shape (N, 4 * planes, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Returns the 1x1 conv + BN shortcut where the shape changes, or None for the identity."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNet(nn.Module):
    """A ResNet of ``len(layers)`` stages; see the module docstring for the options.

    Args:
        block: ``"bottleneck"`` (ResNet-50) or ``"basic"`` (ResNet-18, ResNet-20).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        num_classes: size of the output layer.
        in_channels: channels of the input images.
        width: channels of the stem and of the first stage (before expansion).
        stem: ``"imagenet"`` (7x7 stride-2 conv + max-pool) or ``"cifar"`` (3x3 stride-1 conv).
        zero_init_residual: start every block's last BN with gamma = 0.

    Raises:
        ValueError: for any option outside its allowed values (one sentence naming it).
    """

    def __init__(
        self,
        block: BlockName = "bottleneck",
        layers: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        stem: StemName = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        _checks.one_of("block", block, _BLOCKS)
        layers = _checks.positive_int_tuple("layers", layers)
        _checks.positive_int("num_classes", num_classes)
        _checks.positive_int("in_channels", in_channels)
        _checks.positive_int("width", width)
        _checks.one_of("stem", stem, ("imagenet", "cifar"))
        _checks.one_of("zero_init_residual", zero_init_residual, (False, True))
        block_cls = _BLOCKS[block]

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)

        channels = width
        for i, num_blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for j in range(num_blocks):
                # Only the first block of stages 2.. downsamples (and projects its shortcut).
                stride = 2 if (i > 0 and j == 0) else 1
                stage.append(block_cls(channels, planes, stride))
                channels = planes * block_cls.expansion
            # Named layer1, layer2, ... as in the reference implementation.
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Kaiming-normal (fan-out) convolutions and unit-gamma BN, as the reference code does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits of shape ``(N, num_classes)`` for images ``x`` of shape (N, C, H, W)."""
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet50(**options: object) -> ResNet:
    """Returns ResNet-50 v1.5 (bottleneck, 3-4-6-3); ``options`` override :class:`ResNet`'s."""
    return ResNet(**{"block": "bottleneck", "layers": (3, 4, 6, 3), **options})  # type: ignore[arg-type]


def resnet18(**options: object) -> ResNet:
    """Returns ResNet-18 (basic blocks, 2-2-2-2); ``options`` override :class:`ResNet`'s."""
    return ResNet(**{"block": "basic", "layers": (2, 2, 2, 2), **options})  # type: ignore[arg-type]


def resnet20(**options: object) -> ResNet:
    """Returns the CIFAR ResNet-20 (He et al. 2016, Sec. 4.2): 3 stages of 3 basic blocks.

    16/32/64 channels, 3x3 stem without max-pool, 10 classes by default. Unlike the paper's
    option-A (zero-padded identity) shortcuts, the two downsampling blocks use 1x1-conv projections,
    so every weight is an ordinary Conv2d that the sparsifier can select (272,474 parameters
    instead of the paper's 269,722).
    """
    defaults: dict[str, object] = {
        "block": "basic",
        "layers": (3, 3, 3),
        "width": 16,
        "stem": "cifar",
        "num_classes": 10,
    }
    return ResNet(**{**defaults, **options})  # type: ignore[arg-type]
