"""Why VD and L0 runs re-estimate BatchNorm statistics before evaluation (RESULTS.md, issue 7).

Trains the image task's ResNet with a noisy technique for a few steps, exactly as the runner
does, then evaluates it on the validation split twice: with the running statistics gathered
during training (on the noisy network), and finalized with the statistics estimated again over
training batches on the deterministic network that is evaluated.

    .venv/bin/python scripts/bn_statistics_probe.py            # L0, weight 1e-3, 60 steps
    .venv/bin/python scripts/bn_statistics_probe.py --method variational_dropout \
        --set sparsity.kl_weight=1e-3
    .venv/bin/python scripts/bn_statistics_probe.py --method magnitude --steps 200 \
        --set sparsity.sparsity=0.98 --set sparsity.end=0.4 --set sparsity.pruned_weights=keep
"""

from __future__ import annotations

import argparse

import torch

from sparsebench import methods
from sparsebench.train import build_config
from sparsebench.train.loop import learning_rate_factor, prepare, recalibrate_batch_norm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="fmnist-resnet")
    p.add_argument("--method", default="l0")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batches", type=int, default=50, help="batches for the re-estimation")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override, as for `sparsebench train`")
    args = p.parse_args()
    torch.set_num_threads(1)
    method = methods.get(args.method).name  # "vd" is variational_dropout
    study = ["optim.method_lr_scale=10"]  # the image study's
    if method in ("l0", "variational_dropout"):
        study.append("sparsity.warmup_end=0.5")
    if method == "l0":
        study += ["sparsity.l0_weight=1e-3", "sparsity.init_log_alpha=2.197"]
    config = build_config(args.task, method=args.method, steps=args.steps,
                          overrides=[*study, *args.overrides])
    prepared = prepare(config)
    model, sp, opt, task = (prepared.model, prepared.sparsifier, prepared.optimizer,
                            prepared.task)
    cpu = torch.device("cpu")
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = (config.optim.lr * group["lr_scale"]
                           * learning_rate_factor(config.optim, step, args.steps))
        loss = task.loss(model, task.next_batch(cpu))
        opt.zero_grad()
        (loss + sp.penalty()).backward()
        opt.step()
        sp.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  task loss {loss.item():.3f}", flush=True)
    model.eval()
    before = task.evaluate(model, "valid", cpu)
    print(f"training statistics:     loss {before['loss']:10.3f}  top-1 {before['top1']:.4f}")
    sparsity = sp.sparsity()
    plain = sp.finalize()
    recalibrate_batch_norm(plain, task, cpu, args.batches)
    after = task.evaluate(plain, "valid", cpu)
    print(f"re-estimated statistics: loss {after['loss']:10.3f}  top-1 {after['top1']:.4f}  "
          f"(sparsity {sparsity:.4f})")


if __name__ == "__main__":
    main()
