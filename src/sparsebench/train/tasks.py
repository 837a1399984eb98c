"""Tasks: a model + dataset + training recipe, as presets of ``RunConfig``, and the two kinds
of work behind them (image classification, translation) that the training loop drives.

A task kind knows how to load its data, make resumable batches, compute the training loss and
evaluate; the loop knows nothing about images or sentences.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batch_order import BatchOrder
from .config import RunConfig, apply_overrides

__all__ = ["PRESETS", "ClassificationTask", "TranslationTask", "make_task", "preset", "presets",
           "task_class"]


@dataclass(frozen=True)
class Preset:
    """A named starting configuration."""

    name: str
    description: str
    values: dict[str, Any]


def _classification(model: str, options: dict[str, Any], steps: int, batch: int, lr: float,
                    augment: bool, weight_decay: float, label_smoothing: float = 0.0,
                    dataset: str = "fashion-mnist", optimizer: str = "sgd") -> dict[str, Any]:
    return {
        "model": {"name": model, "options": options},
        "data": {"dataset": dataset, "batch_size": batch, "augment": augment},
        "optim": {"name": optimizer, "lr": lr, "momentum": 0.9, "nesterov": True,
                  "weight_decay": weight_decay, "schedule": "cosine",
                  "warmup_steps": max(1, steps // 50), "label_smoothing": label_smoothing},
        "sparsity": {"begin": 0.1, "end": 0.6, "frequency": 0.01},
        "run": {"steps": steps, "checkpoint_every": max(1, steps // 10),
                "log_every": max(1, steps // 100)},
    }


def _language_model(model: str, options: dict[str, Any], steps: int, batch: int,
                    max_length: int, lr: float, dataset: str) -> dict[str, Any]:
    return {
        "model": {"name": model, "options": options},
        "data": {"dataset": dataset, "batch_size": batch, "max_length": max_length},
        "optim": {"name": "adam", "lr": lr, "schedule": "cosine",
                  "warmup_steps": max(1, steps // 50), "grad_clip": 1.0},
        "sparsity": {"begin": 0.1, "end": 0.6, "frequency": 0.01},
        "run": {"steps": steps, "checkpoint_every": max(1, steps // 10),
                "log_every": max(1, steps // 100)},
    }


def _translation(model: str, options: dict[str, Any], steps: int, max_tokens: int, lr: float,
                 warmup: int, dataset: str, vocab_size: int) -> dict[str, Any]:
    return {
        "model": {"name": model, "options": {"vocab_size": vocab_size, **options}},
        "data": {"dataset": dataset, "max_tokens": max_tokens, "vocab_size": vocab_size},
        "optim": {"name": "adam", "lr": lr, "betas": (0.9, 0.98), "eps": 1e-9,
                  "schedule": "inverse_sqrt", "warmup_steps": warmup, "label_smoothing": 0.1},
        "sparsity": {"begin": 0.1, "end": 0.6, "frequency": 0.01},
        "eval": {"beam_size": 4, "max_valid": 500},
        "run": {"steps": steps, "checkpoint_every": max(1, steps // 10),
                "log_every": max(1, steps // 100)},
    }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # Adam, as the VD and L0 papers trained their LeNets: with SGD, L0's gates barely move.
        Preset("fmnist-lenet300", "LeNet-300-100 on Fashion-MNIST (minutes on a CPU)",
               _classification("lenet300", {}, 6000, 100, 1e-3, False, 0.0, optimizer="adam")),
        Preset("fmnist-lenet5", "LeNet-5 (Caffe) on Fashion-MNIST",
               _classification("lenet5", {}, 6000, 100, 1e-3, True, 0.0, optimizer="adam")),
        Preset("fmnist-resnet", "CPU-size ResNet-50 shape (width 16) on Fashion-MNIST",
               _classification("resnet50-small", {}, 4000, 128, 0.1, True, 5e-4, 0.1)),
        Preset("ding-transformer", "CPU-size Transformer on the Ding English→German corpus",
               _translation("transformer-tiny", {}, 8000, 4096, 1e-3, 1000, "ding", 8000)),
        Preset("shakespeare-gru", "CPU-size GRU character language model on Shakespeare",
               _language_model("gru-lm", {"hidden_size": 512, "embed_dim": 64}, 4000, 64, 128,
                               2e-3, "shakespeare")),
        Preset("imagenet-resnet50", "ResNet-50 on an ImageNet folder (set data.root)",
               _classification("resnet50", {}, 128_000, 1024, 0.4, True, 1e-4, 0.1,
                               dataset="imagefolder")),
        Preset("wmt14-transformer", "Transformer base on WMT14 EN-DE text (set data.root)",
               _translation("transformer-base", {}, 500_000, 4096, 7e-4, 4000, "parallel",
                            32000)),
    )
}


def presets() -> list[Preset]:
    """Returns every task preset."""
    return list(PRESETS.values())


def preset(name: str) -> RunConfig:
    """Returns the (unvalidated) RunConfig of task ``name``.

    Raises:
        ValueError: for an unknown task, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(PRESETS)}.")
    config = RunConfig(task=name)
    apply_overrides(config, PRESETS[name].values)
    return config


# -- image classification ---------------------------------------------------------------------
class ClassificationTask:
    """Images → class. Fashion-MNIST/MNIST live in memory (bit-identical resume); image
    folders stream through a DataLoader."""

    metric_name = "top1"
    higher_is_better = True
    #: What :meth:`evaluate` reports for a split (top-5 only with 5 classes or more).
    eval_metrics = ("top1", "top5", "loss")

    def __init__(self, config: RunConfig, rank: int = 0, world: int = 1):
        self.config, self.rank, self.world = config, rank, world
        data = config.data
        self.generator = torch.Generator().manual_seed(config.run.seed * 1000 + 17 + rank)
        if data.dataset in ("fashion-mnist", "mnist"):
            from ..data import IdxImageDataset

            def load(split: str) -> IdxImageDataset:
                return IdxImageDataset(data.root, split, dataset=data.dataset,
                                       valid_size=data.valid_size)

            self.train_set = load("train")
            self.images, self.labels = self.train_set.tensors()
            if data.limit_train:
                self.images = self.images[: data.limit_train]
                self.labels = self.labels[: data.limit_train]
            self.eval_sets = {"test": load("test").tensors()}
            if data.valid_size:
                self.eval_sets["valid"] = load("valid").tensors()
            self.background = float(self.images.min())
            self.flip = data.dataset == "fashion-mnist"
            self.num_classes, self.in_channels = 10, 1
            self.streaming = False
        else:
            from ..data import ImageFolder, imagenet_eval_transform, imagenet_train_transform

            train = ImageFolder(data.root, data.train_split, imagenet_train_transform())
            self.folder_train = train
            self.folder_eval = {
                "valid": ImageFolder(data.root, "val", imagenet_eval_transform(),
                                     classes=train.classes)
            }
            self.num_classes, self.in_channels = train.num_classes, 3
            self.streaming = True
        self.order = BatchOrder(self._epoch_batches, rank, world)

    def model_options(self) -> dict[str, Any]:
        """Returns model options the data imply (class count, input channels)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels}

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        size = len(self.folder_train) if self.streaming else len(self.labels)
        g = torch.Generator().manual_seed(self.config.run.seed * 7919 + epoch)
        order = torch.randperm(size, generator=g).tolist()
        b = self.config.data.batch_size
        return [order[i : i + b] for i in range(0, size - b + 1, b)] or [order]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop after 2-pixel padding (and horizontal flip), from the task's generator."""
        n, _, h, w = x.shape
        pad = 2
        padded = F.pad(x, (pad, pad, pad, pad), value=self.background)
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.generator)
        rows = offsets[:, 0, None] + torch.arange(h)
        cols = offsets[:, 1, None] + torch.arange(w)
        batch_index = torch.arange(n)[:, None, None]
        out = padded[:, 0][batch_index, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        if self.flip:
            flip = torch.rand(n, generator=self.generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return out

    def next_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns this rank's share of the next training batch."""
        indices = next(self.order)
        if self.streaming:
            items = [self.folder_train[i] for i in indices]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([item[1] for item in items])
        else:
            x, y = self.images[indices], self.labels[indices]
            if self.config.data.augment:
                x = self._augment(x)
        return x.to(device), y.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y, label_smoothing=self.config.optim.label_smoothing)

    def example_input(self) -> tuple[torch.Tensor, ...]:
        """Returns one example, for FLOP counting."""
        if self.streaming:
            return (self.folder_eval["valid"][0][0].unsqueeze(0),)
        return (self.images[:1],)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device,
                 metrics: Collection[str] | None = None) -> dict[str, float]:
        """Returns top-1/top-5 accuracy (fractions) and the mean loss on ``split``; one pass
        gives all three, so ``metrics`` (a subset of :attr:`eval_metrics`) changes nothing."""
        from ..metrics import evaluate_classifier

        batch = self.config.eval.batch_size
        if self.streaming:
            if split not in self.folder_eval:
                return {}
            loader = torch.utils.data.DataLoader(self.folder_eval[split], batch_size=batch,
                                                 num_workers=self.config.data.workers)
            return evaluate_classifier(model, loader, device=device)
        if split not in self.eval_sets:
            return {}
        images, labels = self.eval_sets[split]
        batches = ((images[i : i + batch], labels[i : i + batch])
                   for i in range(0, len(labels), batch))
        return evaluate_classifier(model, batches, device=device)


# -- translation ------------------------------------------------------------------------------
class TranslationTask:
    """Source sentence → target sentence with a Transformer, scored by BLEU on detokenized
    output (sacrebleu, case-sensitive)."""

    metric_name = "bleu"
    higher_is_better = True
    #: What :meth:`evaluate` reports for a split (besides the sentence count).
    eval_metrics = ("bleu", "chrf", "loss")

    def __init__(self, config: RunConfig, rank: int = 0, world: int = 1):
        from ..data import ParallelTextDataset, TokenBatchSampler, read_split, train_joint_vocab

        self.config, self.rank, self.world = config, rank, world
        data = config.data
        if data.dataset == "ding":
            from ..data import build_ding_corpus

            directory = build_ding_corpus(data.root).directory
        else:
            directory = Path(data.root)
        langs = (data.src_lang, data.tgt_lang)
        self.vocab = train_joint_vocab(directory, data.train_split, langs,
                                       vocab_size=data.vocab_size)
        pairs = read_split(directory, data.train_split, *langs)
        if data.limit_train:
            pairs = pairs[: data.limit_train]
        self.train_set = ParallelTextDataset(pairs, self.vocab, max_length=data.max_length)
        self.eval_pairs = {
            "valid": read_split(directory, data.valid_split, *langs),
            "test": read_split(directory, data.test_split, *langs),
        }
        self.sampler = TokenBatchSampler(self.train_set.lengths(), data.max_tokens,
                                         seed=config.run.seed)
        self.order = BatchOrder(self._epoch_batches, rank, world)

    def model_options(self) -> dict[str, Any]:
        return {"vocab_size": len(self.vocab)}

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        return self.sampler.batches()

    def next_batch(self, device: torch.device):
        from ..data import collate_pairs

        indices = next(self.order) or [0]
        src, tgt = collate_pairs([self.train_set[i] for i in indices])
        return src.to(device), tgt.to(device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        from ..models.transformer import label_smoothed_cross_entropy

        src, tgt = batch
        # Targets are [bos] + ids + [eos]: teacher forcing reads tgt[:-1] and predicts tgt[1:].
        # The call goes through model(...) so DistributedDataParallel sees it.
        logits = model(src, tgt[:, :-1])
        return label_smoothed_cross_entropy(logits, tgt[:, 1:],
                                            smoothing=self.config.optim.label_smoothing,
                                            pad_id=_unwrap(model).config.pad_id)

    def example_input(self) -> tuple[torch.Tensor, ...]:
        src, tgt = self.train_set[0]
        return src.unsqueeze(0), tgt[:-1].unsqueeze(0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device,
                 metrics: Collection[str] | None = None) -> dict[str, float]:
        """Returns BLEU and chrF of beam-search (or greedy) translations of ``split``, and
        ``loss``: the mean cross-entropy (nats, no label smoothing) of each reference token
        given the reference prefix. ``metrics`` (a subset of :attr:`eval_metrics`) computes only
        those: without BLEU and chrF nothing is decoded.

        BLEU of an early model on short sentences moves by points between seeds; the loss of
        the same models moves by hundredths, so a study compares both.
        """
        wanted = set(self.eval_metrics if metrics is None else metrics)
        unknown = wanted - set(self.eval_metrics)
        if unknown:
            raise ValueError(f"unknown translation metrics {sorted(unknown)}; "
                             f"choose from {list(self.eval_metrics)}")
        limit = self.config.eval.max_valid if split == "valid" else self.config.eval.max_test
        pairs = self.eval_pairs[split][:limit] if limit else self.eval_pairs[split]
        model = _unwrap(model)
        was_training = model.training
        model.eval()
        try:
            out: dict[str, float] = {"sentences": float(len(pairs))}
            if "loss" in wanted:
                out["loss"] = self._reference_loss(model, pairs, device)
            if wanted & {"bleu", "chrf"}:
                out.update(self._translation_scores(model, pairs, device))
            return out
        finally:
            model.train(was_training)

    def _reference_loss(self, model: nn.Module, pairs: list[tuple[str, str]],
                        device: torch.device) -> float:
        """Returns the mean -log p(reference token | source, reference prefix) over every
        reference token and EOS, in nats (NaN for no pairs). The source is cut at
        ``data.max_length`` tokens as for the translations; the reference is scored whole
        (positions are sinusoidal, so any length works), in batches of at most
        ``data.max_tokens`` padded tokens, so a long sentence costs time, not memory."""
        from ..data.parallel_text import collate_pairs

        c, n = model.config, self.config.data.max_length
        items = [(torch.tensor(self.vocab.encode(s)[:n] + [c.eos_id]),
                  torch.tensor([c.bos_id] + self.vocab.encode(t) + [c.eos_id]))
                 for s, t in pairs]
        total, tokens = 0.0, 0
        for batch in _token_batches([max(len(a), len(b)) for a, b in items],
                                    self.config.data.max_tokens):
            src, tgt = collate_pairs([items[i] for i in batch], pad_id=c.pad_id)
            src, tgt = src.to(device), tgt.to(device)
            logits = model(src, tgt[:, :-1]).float()
            target = tgt[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           target.reshape(-1), ignore_index=c.pad_id,
                                           reduction="sum"))
            tokens += int((target != c.pad_id).sum())
        return total / tokens if tokens else float("nan")

    def _translation_scores(self, model: nn.Module, pairs: list[tuple[str, str]],
                            device: torch.device) -> dict[str, float]:
        from ..data.parallel_text import collate_pairs
        from ..metrics import bleu, chrf

        eos = model.config.eos_id
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))  # less padding
        translated: dict[int, str] = {}
        batch = max(1, self.config.eval.batch_size // 8)
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            sources = [torch.tensor(self.vocab.encode(pairs[i][0])[: self.config.data.max_length]
                                    + [eos]) for i in chunk]
            src, _ = collate_pairs([(s, s) for s in sources])
            src = src.to(device)
            if self.config.eval.beam_size > 1:
                out = model.beam_search(src, beam_size=self.config.eval.beam_size,
                                        alpha=self.config.eval.length_penalty)
            else:
                out = model.greedy_decode(src)
            for i, row in zip(chunk, out.tolist(), strict=True):
                translated[i] = self.vocab.decode(row)
        hypotheses = [translated[i] for i in range(len(pairs))]
        references = [target for _, target in pairs]
        return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references)}


def _token_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Returns the indices in order of length, cut into batches whose padded size (count x
    longest) stays within ``max_tokens``; a longer item goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


_DDP = torch.nn.parallel.DistributedDataParallel


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, _DDP) else model


def task_class(config: RunConfig) -> type:
    """Returns the task kind that serves ``config.data.dataset`` (not built: no data read)."""
    if config.data.dataset == "shakespeare":
        from .language_model import LanguageModelTask

        return LanguageModelTask
    return TranslationTask if config.data.dataset in ("ding", "parallel") else ClassificationTask


def make_task(config: RunConfig, rank: int = 0, world: int = 1):
    """Returns the task kind that serves ``config.data.dataset``, built."""
    return task_class(config)(config, rank, world)


def seed_everything(seed: int) -> None:
    """Seeds torch and Python's ``random`` (the only generators the runner uses)."""
    torch.manual_seed(seed)
    random.seed(seed)
