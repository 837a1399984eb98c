"""The model registry: names, output shapes, option pass-through and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench import models

EXPECTED_NAMES = {
    "lenet300",
    "lenet5",
    "resnet50",
    "resnet18",
    "resnet20",
    "resnet50-small",
    "transformer-base",
    "transformer-small",
    "transformer-tiny",
}

# (name, options, input shape) for each image classifier; the ImageNet-stem models get a 64x64
# image, the smallest size that still leaves a 2x2 map at the last stage, to keep the test fast.
IMAGE_CASES = [
    ("lenet300", {}, (2, 1, 28, 28), 10),
    ("lenet5", {}, (2, 1, 28, 28), 10),
    ("resnet50", {}, (1, 3, 64, 64), 1000),
    ("resnet18", {}, (1, 3, 64, 64), 1000),
    ("resnet20", {}, (2, 3, 32, 32), 10),
    ("resnet50-small", {}, (2, 1, 28, 28), 10),
    ("resnet50-small", {"in_channels": 3, "num_classes": 100}, (2, 3, 32, 32), 100),
    ("lenet5", {"num_classes": 7, "in_channels": 3, "image_size": 32}, (2, 3, 32, 32), 7),
]


def test_names_cover_the_required_models():
    assert set(models.names()) >= EXPECTED_NAMES
    descriptions = models.describe()
    assert set(descriptions) == set(models.names())
    for name, line in descriptions.items():
        assert line and "\n" not in line, name


@pytest.mark.parametrize(("name", "options", "shape", "classes"), IMAGE_CASES)
def test_image_model_output_shape(name, options, shape, classes):
    model = models.create(name, **options).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["transformer-base", "transformer-small", "transformer-tiny"])
def test_transformer_output_shape(name):
    vocab = 40  # a small vocabulary keeps even the base model quick to build
    model = models.create(name, vocab_size=vocab).eval()
    src = torch.randint(4, vocab, (2, 5))
    tgt_in = torch.randint(4, vocab, (2, 3))
    with torch.no_grad():
        out = model(src, tgt_in)
    assert out.shape == (2, 3, vocab)


def test_transformer_presets_have_their_documented_shapes():
    base = models.create("transformer-base", vocab_size=40)
    assert len(base.encoder) == 6 and len(base.decoder) == 6
    assert base.config.d_model == 512 and base.config.d_ff == 2048 and base.config.n_heads == 8
    assert base.config.dropout == 0.1 and base.config.vocab_size == 40
    tiny = models.create("transformer-tiny")
    assert (tiny.config.d_model, tiny.config.d_ff, tiny.config.n_heads) == (128, 512, 4)
    assert len(tiny.encoder) == 2 and len(tiny.decoder) == 2
    small = models.create("transformer-small")
    assert (small.config.d_model, small.config.d_ff, small.config.n_heads) == (256, 1024, 4)
    assert len(small.encoder) == 3 and len(small.decoder) == 3


def test_options_are_passed_through():
    model = models.create("resnet50", width=8, num_classes=5, stem="cifar", in_channels=1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 8
    assert model.conv1.kernel_size == (3, 3)
    assert model.fc.out_features == 5
    assert models.defaults("resnet50-small")["width"] == 16


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet51'") as info:
        models.create("resnet51")
    for name in EXPECTED_NAMES:
        assert name in str(info.value)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="has no option") as info:
        models.create("lenet5", widht=3)
    assert "num_classes" in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("resnet50", {"stem": "tiny"}, "stem"),
        ("resnet50", {"width": 0}, "width"),
        ("resnet50", {"num_classes": -1}, "num_classes"),
        ("resnet18", {"layers": (2, 0, 2)}, "layers"),
        ("resnet20", {"in_channels": 1.5}, "in_channels"),
        ("lenet5", {"image_size": 8}, "image_size"),
        ("lenet300", {"num_classes": True}, "num_classes"),
        ("transformer-tiny", {"n_heads": 3}, "d_model must be divisible by n_heads"),
        ("transformer-tiny", {"dropout": 1.0}, "dropout"),
        ("transformer-tiny", {"vocab_size": 3}, "unk_id"),
        ("transformer-tiny", {"eos_id": 0}, "must differ"),
    ],
)
def test_bad_option_values_get_one_clear_sentence(name, options, field):
    with pytest.raises(ValueError, match=field) as info:
        models.create(name, **options)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_no_hidden_weights_everything_prunable_is_linear_or_conv():
    """Every parameter of rank >= 2 lives in a Linear or Conv2d, except the embedding."""
    for name in models.names():
        options = {"vocab_size": 40} if name.startswith("transformer") else {}
        model = models.create(name, **options)
        prunable = {
            f"{module_name}.weight"
            for module_name, module in model.named_modules()
            if isinstance(module, nn.Linear | nn.Conv2d)
        }
        for param_name, param in model.named_parameters():
            if param.dim() >= 2 and param_name != "embed.weight":
                assert param_name in prunable, (name, param_name)
        assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
