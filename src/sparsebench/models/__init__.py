"""The study's models and a registry: ``create(name, **options)``, ``names()``, ``describe()``.

>>> from sparsebench import models
>>> net = models.create("resnet50-small")                 # ResNet-50 shape for 28x28x1, width 16
>>> mt = models.create("transformer-tiny", vocab_size=8000)
>>> lm = models.create("gru-lm", vocab_size=85)               # character GRU, hidden 512

Every model keeps its prunable weights in plain ``nn.Linear`` / ``nn.Conv2d`` modules, so
``sparsify()``'s default selection (every Linear and Conv2d weight) works on all of them
unchanged; embeddings, biases and batch/layer norms stay dense.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from torch import nn

from sparsebench.models.gru import GRULanguageModel
from sparsebench.models.lenet import LeNet5, LeNet300100
from sparsebench.models.resnet import ResNet, resnet18, resnet20, resnet50
from sparsebench.models.transformer import (
    PRESETS,
    MultiHeadAttention,
    Transformer,
    TransformerConfig,
    label_smoothed_cross_entropy,
    shift_right,
)

__all__ = [
    "GRULanguageModel",
    "LeNet300100",
    "LeNet5",
    "MultiHeadAttention",
    "PRESETS",
    "ResNet",
    "Transformer",
    "TransformerConfig",
    "create",
    "defaults",
    "describe",
    "label_smoothed_cross_entropy",
    "names",
    "resnet18",
    "resnet20",
    "resnet50",
    "shift_right",
]


@dataclass(frozen=True)
class _Entry:
    """A registered model: what it is, how to build it, and its options with their defaults."""

    description: str
    build: Callable[..., nn.Module]
    defaults: Mapping[str, Any]


def _lenet_defaults() -> dict[str, Any]:
    return {"num_classes": 10, "in_channels": 1, "image_size": 28}


def _resnet_defaults(**overrides: Any) -> dict[str, Any]:
    base = {
        "num_classes": 1000,
        "in_channels": 3,
        "width": 64,
        "stem": "imagenet",
        "layers": (3, 4, 6, 3),
        "zero_init_residual": False,
    }
    return {**base, **overrides}


def _transformer_entry(preset: str, description: str) -> _Entry:
    config = TransformerConfig.preset(preset)
    options = {f.name: getattr(config, f.name) for f in fields(TransformerConfig)}
    return _Entry(description, lambda **o: Transformer(TransformerConfig(**o)), options)


_REGISTRY: dict[str, _Entry] = {
    "lenet300": _Entry(
        "LeNet-300-100: 784-300-100-10 perceptron for 28x28x1 images (266,610 parameters).",
        LeNet300100,
        {**_lenet_defaults(), "width": 300},
    ),
    "lenet5": _Entry(
        "LeNet-5-Caffe: conv 20, conv 50, fc 500, fc 10 for 28x28x1 images (431,080 parameters).",
        LeNet5,
        _lenet_defaults(),
    ),
    "resnet50": _Entry(
        "ResNet-50 v1.5 as in the study: ImageNet, 1000 classes, 25,557,032 parameters.",
        lambda **o: ResNet(block="bottleneck", **o),
        _resnet_defaults(),
    ),
    "resnet18": _Entry(
        "ResNet-18 (basic blocks 2-2-2-2): ImageNet shape, 1000 classes, 11,689,512 parameters.",
        lambda **o: ResNet(block="basic", **o),
        _resnet_defaults(layers=(2, 2, 2, 2)),
    ),
    "resnet20": _Entry(
        "ResNet-20 for 32x32 images: 3x3 basic blocks at 16/32/64 channels, 272,474 parameters.",
        lambda **o: ResNet(block="basic", **o),
        _resnet_defaults(num_classes=10, width=16, stem="cifar", layers=(3, 3, 3)),
    ),
    "resnet50-small": _Entry(
        "ResNet-50 shape at width 16 for 28x28x1 images (Fashion-MNIST), 1,483,898 parameters.",
        lambda **o: ResNet(block="bottleneck", **o),
        _resnet_defaults(num_classes=10, in_channels=1, width=16, stem="cifar"),
    ),
    "transformer-base": _transformer_entry(
        "base", "Transformer base: 6+6 layers, d_model 512, d_ff 2048, 8 heads, 37k shared vocab."
    ),
    "transformer-small": _transformer_entry(
        "small", "CPU Transformer: 3+3 layers, d_model 256, d_ff 1024, 4 heads, 8k vocab."
    ),
    "transformer-tiny": _transformer_entry(
        "tiny", "CPU Transformer: 2+2 layers, d_model 128, d_ff 512, 4 heads, 8k vocab."
    ),
    "gru-lm": _Entry(
        "Character GRU language model: embedding 64, one GRU layer of 512, softmax over the "
        "vocabulary (936,853 parameters for Shakespeare's 85 ids).",
        GRULanguageModel,
        {"vocab_size": 256, "embed_dim": 64, "hidden_size": 512, "layers": 1, "dropout": 0.0},
    ),
}


def names() -> list[str]:
    """Returns the registered model names, in registration order."""
    return list(_REGISTRY)


def describe() -> dict[str, str]:
    """Returns a one-line description for each registered model name."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def _entry(name: str) -> _Entry:
    """Returns the registry entry for ``name``; raises ``ValueError`` listing the valid names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names are {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def defaults(name: str) -> Mapping[str, Any]:
    """Returns the options model ``name`` accepts, with their default values (read-only).

    Raises:
        ValueError: for an unknown name.
    """
    return MappingProxyType(dict(_entry(name).defaults))


def create(name: str, **options: Any) -> nn.Module:
    """Returns a freshly initialised model ``name`` with ``options`` overriding its defaults.

    Raises:
        ValueError: for an unknown name (listing the valid ones), an option the model does not
            take (listing the ones it does), or a bad option value (naming it).
    """
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.defaults))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are {', '.join(entry.defaults)}."
        )
    return entry.build(**{**entry.defaults, **options})
