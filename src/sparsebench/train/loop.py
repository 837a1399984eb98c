"""One training run: config → trained, finalized model + ``result.json`` (see ``rundir``).

Re-running on the same directory resumes from the last checkpoint, and a finished directory is
not trained again. Under ``torchrun`` the run is data-parallel (DistributedDataParallel, gloo on
CPU, NCCL on GPUs); the sparsifier counts optimizer steps, masks stay identical on every rank
(computed from identical weights, and DDP broadcasts buffers from rank 0), and only rank 0
writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .. import __version__, models
from ..distributions import LayerSparsity
from ..init import rescale_for_sparse_fan_in
from ..methods import catalogue
from ..metrics import sparsity_report
from ..rundir import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    INIT_FILE,
    MASK_FILE,
    MODEL_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    atomic_write_bytes,
    atomic_write_json,
    is_finished,
    read_result,
)
from ..schedules import GradualSchedule
from ..sparsify import Sparsifier, load_masks, sparsify
from .checkpoint import load_checkpoint, optimizer_from_flat, optimizer_to_flat, save_checkpoint
from .config import DENSE, OptimConfig, RunConfig, load_yaml
from .sparse_step import SparseTrainingStep
from .tasks import make_task, seed_everything

__all__ = ["Diverged", "Prepared", "learning_rate_factor", "prepare", "round_bounds", "train",
           "write_initial_weights"]

log = logging.getLogger("sparsebench.train")


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Returns the process group this process belongs to, joining it under torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def learning_rate_factor(optim: OptimConfig, step: int, total: int) -> float:
    """Returns the multiplier of ``optim.lr`` at ``step`` (0-based) of ``total``."""
    warmup = optim.warmup_steps
    if optim.schedule == "inverse_sqrt":
        # Vaswani et al.: linear warm-up, then 1/sqrt(step); the peak (factor 1) is at warmup.
        n = step + 1
        return min(n / warmup, math.sqrt(warmup / n))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    passed = sum(step >= int(fraction * total) for fraction in optim.decay_at)
    return optim.decay_factor**passed


def round_bounds(step: int, starts: tuple[int, ...], total: int) -> tuple[int, int]:
    """Returns ``(begin, end)`` of the round of training that holds ``step``: ``starts`` are
    the steps where rounds begin after the first (``Sparsifier.plan_rounds``), ``total`` the
    run's steps. With no starts the whole run is one round, ``(0, total)``."""
    begin = max((s for s in starts if s <= step), default=0)
    end = min((s for s in starts if s > step), default=total)
    return begin, end


def _build_optimizer(optim: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # Weight decay pulls weights towards zero; applied to VD's log σ² or L0's log α it would
    # change the method itself, so the technique's own parameters are left out of it.
    own, rest = [], []
    for name, param in model.named_parameters():
        method_param = ".parametrizations." in f".{name}" and not name.endswith(".original")
        (own if method_param else rest).append(param)
    groups = [{"params": rest, "weight_decay": optim.weight_decay, "lr_scale": 1.0}]
    if own:
        groups.append({"params": own, "weight_decay": 0.0, "lr_scale": optim.method_lr_scale})
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum,
                               nesterov=optim.nesterov and optim.momentum > 0)
    kind = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return kind(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def _resolve_model_options(config: RunConfig, task) -> None:
    """Fills model options the data imply (class count, channels, vocabulary) unless set."""
    accepted = models.defaults(config.model.name)
    for key, value in task.model_options().items():
        if key in accepted:
            config.model.options.setdefault(key, value)


def _attach(config: RunConfig, model: torch.nn.Module) -> Sparsifier | None:
    s = config.sparsity
    if s.method == DENSE:
        return None
    method_config = s.method_config(config.run.steps)
    kwargs: dict[str, Any] = {"include": s.include, "exclude": s.exclude}
    if s.sparsity is not None:
        kwargs["sparsity"] = s.sparsity
        overrides = s.layer_sparsity if isinstance(s.layer_sparsity, dict) else {}
        distribution = (s.layer_sparsity if isinstance(s.layer_sparsity, str)
                        else s.distribution or catalogue.get(s.method).distribution or "uniform")
        kwargs["layer_sparsity"] = LayerSparsity(overrides=overrides, distribution=distribution)
        if s.mask_from is None:
            begin, end = config.step_of(s.begin), config.step_of(s.end)
            frequency = max(1, config.step_of(s.frequency))
            kwargs["schedule"] = GradualSchedule(begin, max(begin, end), frequency)
        else:
            # "keep": no gradient through the mask, and nothing zeroed before the given mask
            # is installed (fix_masks zeroes exactly its own pruned weights).
            method_config = dataclasses.replace(method_config, pruned_weights="keep")
    masks = None
    if s.mask_from is not None:
        masks = load_masks(s.mask_from)
        if s.augmented_init:
            rescale_for_sparse_fan_in(model, masks)
    sp = sparsify(model, method_config, **kwargs)
    if masks is not None:
        sp.fix_masks(masks)
    return sp


class _Progress:
    """A tqdm bar on a terminal when ``bar`` is set; plain log lines every ``every`` steps
    otherwise (on the main process only: ``enabled``)."""

    def __init__(self, total: int, start: int, every: int, enabled: bool, bar: bool = True,
                 path: Path | None = None):
        self.total, self.every, self.enabled = total, every, enabled
        self.path = path  # PROGRESS_FILE: where the step is, for `sparsebench status`
        self.bar = None
        self.started, self.start_step = time.perf_counter(), start
        if enabled and bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, sparsity: float | None, lr: float) -> None:
        if not self.enabled:
            return
        fields = {"loss": f"{loss:.4f}", "lr": f"{lr:.3g}"}
        if sparsity is not None:
            fields["sparsity"] = f"{sparsity:.3f}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(fields, refresh=False)
        if step % self.every and step != self.total:
            return
        rate = (step - self.start_step) / max(1e-9, time.perf_counter() - self.started)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        if self.bar is None:
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            log.info("step %d/%d %s %.2f step/s ETA %.0fs", step, self.total, text, rate, eta)
        if self.path is not None:
            atomic_write_json(self.path, {
                "step": step, "steps": self.total, "loss": loss, "lr": lr,
                "sparsity": sparsity, "steps_per_second": rate,
                "eta_seconds": eta if math.isfinite(eta) else None, "time": time.time()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _versions() -> dict[str, str]:
    import numpy

    return {"sparsebench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def memory_format(config: RunConfig, model: torch.nn.Module) -> torch.memory_format:
    """Returns the layout ``run.memory_format`` asks for: with "auto", channels-last (NHWC)
    for a model with 2-D convolutions and the default layout otherwise."""
    choice = config.run.memory_format
    if choice == "auto":
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        choice = "channels_last" if has_conv else "contiguous"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def _save_state_dict(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous().clone()
                                   for k, v in state.items()}))


@dataclass
class Prepared:
    """Everything a run trains, before its first step."""

    task: Any
    model: torch.nn.Module
    sparsifier: Sparsifier | None
    optimizer: torch.optim.Optimizer
    #: The model's weights before sparsification (plain keys): the run's init.safetensors.
    init_state: dict[str, torch.Tensor]


def prepare(config: RunConfig, device: torch.device | str = "cpu", rank: int = 0,
            world: int = 1) -> Prepared:
    """Returns the task (data loaded), the model (seeded init, or ``sparsity.init_from``) with
    its technique attached, and the optimizer, as ``train`` starts from them."""
    seed_everything(config.run.seed)
    task = make_task(config, rank, world)
    _resolve_model_options(config, task)
    model = models.create(config.model.name, **config.model.options).to(device)
    if config.sparsity.init_from:
        model.load_state_dict(load_file(config.sparsity.init_from))
    # Before the technique attaches, so its masks and parameters (made "like" the weights)
    # share the layout; load_state_dict copies into it, so resumed runs keep it too.
    model = model.to(memory_format=memory_format(config, model))
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sp = _attach(config, model)
    return Prepared(task, model, sp, _build_optimizer(config.optim, model), init_state)


def write_initial_weights(run_dir: str | Path) -> Path:
    """Writes ``run_dir/init.safetensors`` again from the run's ``config.yaml`` and returns its
    path. A run's initial weights are a function of its config (the seeded init, or the file
    it names in ``sparsity.init_from``), so a run directory brought from another machine
    without them (they are the largest file, and random) can have them back for a lottery
    ticket."""
    run_dir = Path(run_dir)
    config = RunConfig.from_dict(load_yaml(run_dir / CONFIG_FILE)).validate()
    prepared = prepare(config)
    path = run_dir / INIT_FILE
    _save_state_dict(path, prepared.init_state)
    return path


def train(config: RunConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Trains one run into ``out_dir`` and returns its result (also in ``result.json``).
    ``progress`` shows a bar on a terminal; without it (or off a terminal) the progress goes
    to the log every ``run.log_every`` steps.

    Resumes from ``out_dir/checkpoint`` when present; returns the stored result at once when
    the directory already holds one. A loss that becomes NaN/inf ends the run with status
    "diverged" (the last checkpoint is kept).
    """
    config.validate()
    out = Path(out_dir)
    if is_finished(out):
        log.info("%s already holds a result; not training again.", out)
        return read_result(out)
    device = torch.device(config.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device = cuda but no GPU is available here; use run.device=cpu.")
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    dist = Distributed.from_env(device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.rank % torch.cuda.device_count())

    prepared = prepare(config, device, dist.rank, dist.world)
    task, model, sp, optimizer = (prepared.task, prepared.model, prepared.sparsifier,
                                  prepared.optimizer)
    # Where a technique that trains in rounds starts each round after the first (none for
    # most): checked before anything is written, so a bad option fails the run at once.
    starts = sp.plan_rounds(config.run.steps) if sp is not None else ()
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / INIT_FILE).exists():
            _save_state_dict(out / INIT_FILE, prepared.init_state)
    wrapped = model
    if dist.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    sparse = None
    if sp is not None:
        sp.use_optimizer(optimizer)  # SET and RigL give grown connections a fresh state
        if config.run.sparse_step != "off":
            sparse = SparseTrainingStep(sp, optimizer, config.run.sparse_step,
                                        distributed=dist.world > 1)

    checkpoint = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    start, elapsed = 0, 0.0
    if checkpoint.exists():
        groups, meta = load_checkpoint(checkpoint)
        model.load_state_dict(groups["model"])
        optimizer.load_state_dict(optimizer_from_flat(groups.get("optim", {}), meta["optim"]))
        if sp is not None:
            sp.load_state_dict(groups["sparsifier"])
        torch.set_rng_state(groups["rng"]["torch"])
        if "cuda" in groups["rng"] and device.type == "cuda":
            torch.cuda.set_rng_state(groups["rng"]["cuda"], device)
        if hasattr(task, "generator"):
            task.generator.set_state(groups["rng"]["task"])
        random.setstate((meta["python_random"][0], tuple(meta["python_random"][1]), None))
        task.order.load_state_dict(meta["order"])
        if sparse is not None:
            sparse.load_state_dict(meta.get("sparse_step", {}))
        start, elapsed = meta["step"], meta["train_seconds"]
        log.info("Resuming %s from step %d.", out, start)
    elif dist.is_main:
        atomic_write_bytes(out / CONFIG_FILE, config.to_yaml().encode())

    writer = None
    if config.run.tensorboard and dist.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("run.tensorboard needs the tensorboard package "
                             "(pip install tensorboard).") from None
        writer = SummaryWriter(str(out / "tensorboard"))

    steps = config.run.steps
    bar = _Progress(steps, start, config.run.log_every, dist.is_main, bar=progress,
                    path=out / PROGRESS_FILE)
    model.train()
    if sparse is not None:
        sparse.resume(start)
    tick = time.perf_counter()
    try:
        for step in range(start, steps):
            if step in starts:
                # A round is a training run of its own: a fresh optimizer (no momentum or
                # moments carried over) and the schedule from its start, over its length.
                if sparse is not None:
                    sparse.dense()
                optimizer = _build_optimizer(config.optim, model)
                sp.use_optimizer(optimizer)
                if sparse is not None:
                    sparse.use_optimizer(optimizer)
                    sparse.resume(step)
            begin, end = round_bounds(step, starts, steps)
            lr_factor = learning_rate_factor(config.optim, step - begin, end - begin)
            for group in optimizer.param_groups:
                group["lr"] = config.optim.lr * lr_factor * group["lr_scale"]
            batch = task.next_batch(device)
            loss = task.loss(wrapped, batch)
            total = loss + sp.penalty() if sp is not None else loss
            value = float(total.detach())
            if not math.isfinite(value):
                raise Diverged(f"the loss became {value} at step {step + 1} "
                               f"(task loss {float(loss.detach())}).")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.optim.grad_clip:  # the optimizer's: a sparse step's kept weights
                trained = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(trained, config.optim.grad_clip)
            optimizer.step()
            if sp is not None:
                sp.step()
            done = step + 1
            logging_step = done % config.run.log_every == 0 or done == steps
            sparsity_now = sp.sparsity() if sp is not None and logging_step else None
            bar.update(done, value, sparsity_now, config.optim.lr * lr_factor)
            if writer is not None and logging_step:
                writer.add_scalar("train/loss", value, done)
                writer.add_scalar("train/lr", config.optim.lr * lr_factor, done)
                if sparsity_now is not None:
                    writer.add_scalar("train/sparsity", sparsity_now, done)
            if config.eval.every and done % config.eval.every == 0 and done < steps:
                elapsed += time.perf_counter() - tick
                if sparse is not None:
                    sparse.dense()
                if dist.is_main:
                    metrics = task.evaluate(model, "valid", device)
                    log.info("step %d valid %s", done, _fmt(metrics))
                    if writer is not None:
                        for key, val in metrics.items():
                            writer.add_scalar(f"valid/{key}", val, done)
                model.train()
                if sparse is not None:
                    sparse.resume(done)
                tick = time.perf_counter()
            if done % config.run.checkpoint_every == 0 and done < steps:
                elapsed += time.perf_counter() - tick
                if sparse is not None:
                    sparse.dense()
                if dist.is_main:
                    _write_checkpoint(checkpoint, model, optimizer, sp, task, done, elapsed,
                                      sparse)
                dist.barrier()
                if sparse is not None:
                    sparse.resume(done)
                tick = time.perf_counter()
    except Diverged as error:
        bar.close()
        log.error("Run %s diverged: %s", out, error)
        result = {"schema": 1, "status": "diverged", "error": str(error), **_identity(config),
                  "steps": steps, "config": config.to_dict(), "versions": _versions()}
        if dist.is_main:
            atomic_write_json(out / RESULT_FILE, result)
        return result
    elapsed += time.perf_counter() - tick
    bar.close()
    sparse_summary = None
    if sparse is not None:
        sparse_summary = {"mode": config.run.sparse_step, "layers": sparse.sparse_layers,
                          "steps": sparse.sparse_steps, "dense_layers": sparse.skipped}
        sparse.close()
    return _finish(config, out, model, sp, task, device, dist, steps, elapsed, writer,
                   sparse_summary)


DEFAULT_BN_BATCHES = 50


def bn_batches_for(config: RunConfig) -> int:
    """Returns how many batches re-estimate BatchNorm statistics before evaluation."""
    if config.eval.bn_batches is not None:
        return config.eval.bn_batches
    technique = catalogue.find(config.sparsity.method)
    # Training with noise on the weights (VD, L0) gathers running statistics of a noisy
    # network, which do not fit the deterministic one evaluated.
    return DEFAULT_BN_BATCHES if technique and technique.trains_with_noise else 0


def recalibrate_batch_norm(model: torch.nn.Module, task, device: torch.device,
                           batches: int) -> int:
    """Re-estimates every BatchNorm layer's running mean and variance of ``model`` as an
    equal-weight average over ``batches`` training batches (no gradients, weights untouched).
    Returns the number of batches used (0 when the model has no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    was_training = model.training
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            task.loss(model, task.next_batch(device))  # the task's own forward pass
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    log.info("BatchNorm statistics re-estimated over %d training batches.", batches)
    return batches


def _identity(config: RunConfig) -> dict[str, Any]:
    return {"task": config.task, "method": config.sparsity.method,
            "target_sparsity": config.sparsity.sparsity, "seed": config.run.seed}


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _write_checkpoint(path: Path, model, optimizer, sp, task, step: int, elapsed: float,
                      sparse: SparseTrainingStep | None = None) -> None:
    optim_tensors, optim_meta = optimizer_to_flat(optimizer.state_dict())
    rng = {"torch": torch.get_rng_state()}
    device = next(model.parameters()).device
    if device.type == "cuda":  # VD and L0 draw their noise on the GPU: resume it too
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if hasattr(task, "generator"):
        rng["task"] = task.generator.get_state()
    groups = {"model": model.state_dict(), "optim": optim_tensors, "rng": rng}
    if sp is not None:
        groups["sparsifier"] = sp.state_dict()
    version, internal, _ = random.getstate()
    meta = {"step": step, "train_seconds": elapsed, "optim": optim_meta,
            "order": task.order.state_dict(), "python_random": [version, list(internal)]}
    if sparse is not None:
        meta["sparse_step"] = sparse.state_dict()
    save_checkpoint(path, groups, meta)


def _finish(config, out, model, sp, task, device, dist, steps, elapsed, writer,
            sparse_summary=None):
    """Finalizes, evaluates and writes the run's files; returns the result."""
    model.eval()
    masks = sp.masks() if sp is not None else None
    sparsified = [layer.name for layer in sp.layers] if sp is not None else None
    plain = sp.finalize() if sp is not None else model
    result: dict[str, Any] = {}
    if dist.is_main:
        bn_batches = recalibrate_batch_norm(plain, task, device, bn_batches_for(config))
        metrics = {split: task.evaluate(plain, split, device) for split in ("valid", "test")}
        with torch.no_grad():
            example = tuple(t.to(device) for t in task.example_input())
            report = sparsity_report(plain, *example)
        layers = report.to_dict()["layers"]
        if sparsified is not None:
            chosen = [layer for layer in layers if layer["name"] in set(sparsified)]
            zeros = sum(layer["size"] - layer["nonzeros"] for layer in chosen)
            achieved = zeros / sum(layer["size"] for layer in chosen)
        else:
            achieved = report.sparsity
        name = task.metric_name
        result = {
            "schema": 1,
            "status": "finished",
            **_identity(config),
            "sparsity": achieved,
            "layers": layers,
            "metric": {"name": name, "test": metrics["test"].get(name),
                       "valid": metrics["valid"].get(name),
                       "higher_is_better": task.higher_is_better},
            "metrics": metrics,
            "steps": steps,
            "train_seconds": elapsed,
            "seconds_per_step": elapsed / steps,  # elapsed adds up over resumes
            "flops": {"dense": report.dense_flops, "sparse": report.sparse_flops,
                      "per": "example"},
            "parameters": {"total": report.total_parameters,
                           "nonzero": report.total_nonzero_parameters},
            "config": config.to_dict(),
            "versions": _versions(),
            "world_size": dist.world,
            "bn_recalibration_batches": bn_batches,
            "memory_format": str(memory_format(config, plain)).removeprefix("torch."),
        }
        if sparse_summary is not None:
            # Which layers trained sparse at the end, and how many steps had one sparse.
            result["sparse_step"] = sparse_summary
        _save_state_dict(out / MODEL_FILE, plain.state_dict())
        if masks is not None:
            atomic_write_bytes(out / MASK_FILE, save({k: v.contiguous()
                                                      for k, v in masks.items()}))
        atomic_write_json(out / RESULT_FILE, result)  # last: its presence means "done"
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        if writer is not None:
            writer.add_scalar(f"test/{name}", result["metric"]["test"] or 0.0, steps)
            writer.close()
        log.info("%s: %s test %s = %s, sparsity %.4f, %.1fs", out, config.sparsity.method,
                 name, result["metric"]["test"], achieved, elapsed)
    dist.barrier()
    return result
