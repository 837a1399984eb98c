"""LeNets and ResNets: parameter counts from hand-worked formulas, structure and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsebench.models import LeNet5, LeNet300100, ResNet, resnet18, resnet20, resnet50


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resnet_params(
    block: str, layers: tuple[int, ...], width: int, in_channels: int, classes: int, stem: str
) -> int:
    """Parameter count of a ResNet worked out layer by layer (conv weights, BN gamma+beta, fc)."""
    expansion = 4 if block == "bottleneck" else 1
    kernel = 7 if stem == "imagenet" else 3
    n = in_channels * width * kernel * kernel + 2 * width  # stem conv + BN
    channels = width
    for i, blocks in enumerate(layers):
        p = width * 2**i
        out = expansion * p
        for j in range(blocks):
            if block == "bottleneck":
                n += channels * p + 2 * p  # 1x1 reduce + BN
                n += 9 * p * p + 2 * p  # 3x3 + BN
                n += p * out + 2 * out  # 1x1 expand + BN
            else:
                n += 9 * channels * p + 2 * p + 9 * p * p + 2 * p  # two 3x3 + BN
            stride = 2 if i > 0 and j == 0 else 1
            if stride != 1 or channels != out:
                n += channels * out + 2 * out  # projection shortcut + BN
            channels = out
    return n + channels * classes + classes


def test_resnet50_has_the_reference_parameter_count():
    assert count(resnet50()) == 25_557_032
    # The formula reproduces the published count, so it can be trusted for the variants below.
    assert resnet_params("bottleneck", (3, 4, 6, 3), 64, 3, 1000, "imagenet") == 25_557_032


def test_resnet18_has_the_reference_parameter_count():
    assert count(resnet18()) == 11_689_512


def test_resnet20_count_is_the_paper_count_plus_two_projection_shortcuts():
    # He et al.'s option-A ResNet-20 has 269,722 parameters; our two 1x1 projections (16->32 and
    # 32->64, each with BN) add 16*32 + 64 + 32*64 + 128 = 2,752.
    assert count(resnet20()) == 269_722 + 2_752
    assert count(resnet20()) == resnet_params("basic", (3, 3, 3), 16, 3, 10, "cifar")


@pytest.mark.parametrize(
    ("block", "layers", "width", "in_channels", "classes", "stem"),
    [
        ("bottleneck", (3, 4, 6, 3), 16, 1, 10, "cifar"),
        ("bottleneck", (1, 1), 8, 3, 7, "imagenet"),
        ("basic", (2, 2, 2, 2), 16, 1, 10, "cifar"),
    ],
)
def test_resnet_variant_counts_match_the_formula(block, layers, width, in_channels, classes, stem):
    model = ResNet(block, layers, classes, in_channels, width, stem)
    assert count(model) == resnet_params(block, layers, width, in_channels, classes, stem)


def test_resnet50_is_v1_5_stride_on_the_3x3():
    model = resnet50()
    first = model.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv1.kernel_size == (1, 1)
    assert first.conv2.stride == (2, 2) and first.conv2.kernel_size == (3, 3)
    assert first.downsample[0].stride == (2, 2)
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] == [
        3,
        4,
        6,
        3,
    ]
    # Batch norm after every convolution.
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert convs == bns == 53
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_imagenet_stem_reduces_by_32_and_cifar_stem_by_8():
    features = {}
    imagenet = resnet50(width=8).eval()
    imagenet.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("imagenet", o))
    cifar = resnet50(width=8, stem="cifar", in_channels=1).eval()
    cifar.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("cifar", o))
    with torch.no_grad():
        imagenet(torch.randn(1, 3, 64, 64))
        cifar(torch.randn(1, 1, 32, 32))
    assert features["imagenet"].shape == (1, 8 * 8 * 4, 2, 2)
    assert features["cifar"].shape == (1, 8 * 8 * 4, 4, 4)


def test_kaiming_fan_out_init_and_zero_init_residual():
    torch.manual_seed(0)
    model = resnet50(width=16, stem="cifar", zero_init_residual=True)
    conv = model.layer4[0].conv2  # 128 * 128 * 9 weights: a tight std estimate
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    for block in [*model.layer1, *model.layer4]:
        assert torch.all(block.bn3.weight == 0)
        assert torch.all(block.bn1.weight == 1)
    # With gamma = 0 every block is relu(shortcut(x)); the unzeroed default is not.
    assert torch.all(resnet50(width=16).layer1[0].bn3.weight == 1)


def test_lenet_counts_by_hand():
    assert count(LeNet300100()) == (784 * 300 + 300) + (300 * 100 + 100) + (100 * 10 + 10)
    conv = (20 * 1 * 25 + 20) + (50 * 20 * 25 + 50)
    fc = (50 * 4 * 4 * 500 + 500) + (500 * 10 + 10)
    assert count(LeNet5()) == conv + fc == 431_080


def test_models_train_one_step():
    """A gradient step changes every weight: nothing is detached or frozen by accident."""
    torch.manual_seed(0)
    model = resnet20(width=4, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.arange(4))
    loss.backward()
    opt.step()
    for b, p in zip(before, model.parameters(), strict=True):
        assert not torch.equal(b, p)
