"""How much of a magnitude-pruning mask was decided at initialization (RESULTS.md, issue 7).

On a short budget the weights move little from where they started, so the weights magnitude
pruning keeps may largely be those that were large at init. Then a lottery ticket (the mask
with the pruning run's own initial weights) starts from larger kept weights than scratch-e (the
mask with a fresh draw), and augmented init rescales a fresh draw instead. For each source run
this prints, over every masked layer:

* the share of kept weights that were among the layer's largest at init (as many as it keeps);
  a mask unrelated to the init would give the density;
* the RMS of the kept weights at init over the RMS of the whole layer at init, pooled: how
  much larger a lottery ticket's weights start than a fresh draw's (1.0 for a fresh draw);
* the same for augmented init, which multiplies each output unit's fresh weights by
  sqrt(fan-in / kept fan-in).

The masks come from those kept beside the store (``<store dir>/masks``) and the initial
weights are drawn again from each run's config, so this works on a fresh checkout:

    .venv/bin/python scripts/mask_init_overlap.py --store results/study/ding-transformer.db \\
        magnitude-s70-r0-83bb4b7f0f8a magnitude-s90-r0-76b23a2feba8 magnitude-s95-r0-83937f81b9cd
"""

from __future__ import annotations

import argparse

import torch

from sparsebench.study.source_masks import archive_path, unpack_masks
from sparsebench.study.store import RunStore
from sparsebench.train import RunConfig
from sparsebench.train.loop import prepare


def overlap(init: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Pools the three measures above over the layers of ``masks``."""
    kept = total = kept_largest = 0
    kept_square = all_square = augmented_square = 0.0
    for name, mask in masks.items():
        weight, keep = init[name].double(), mask.bool()
        k = int(keep.sum())
        largest = torch.zeros(weight.numel(), dtype=torch.bool)
        largest[weight.abs().flatten().topk(k).indices] = True
        kept_largest += int((largest & keep.flatten()).sum())
        kept, total = kept + k, total + keep.numel()
        square = weight.square()
        kept_square += float(square[keep].sum())
        all_square += float(square.sum())
        # A fresh draw's kept weights have the layer's mean square on average; augmented
        # init multiplies each unit's by fan_in / kept fan_in in the square.
        per_unit = keep.flatten(1).sum(1).double()
        fan_in = keep[0].numel()
        mean_square = float(square.mean())
        augmented_square += float((per_unit * fan_in / per_unit.clamp(min=1)).sum()) * mean_square
    fresh_rms = (all_square / total) ** 0.5
    return {
        "density": kept / total,
        "kept among largest at init": kept_largest / kept,
        "lottery RMS / fresh RMS": (kept_square / kept) ** 0.5 / fresh_rms,
        "augmented RMS / fresh RMS": (augmented_square / kept) ** 0.5 / fresh_rms,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the sweep store the runs are in")
    p.add_argument("runs", nargs="+", help="ids of finished magnitude runs with a kept mask")
    args = p.parse_args()
    with RunStore(args.store) as store:
        for run_id in args.runs:
            run = store.get(run_id)
            archive = archive_path(args.store, run_id)
            if run is None or not archive.is_file():
                raise SystemExit(f"{run_id}: not in {args.store}, or no kept mask at {archive}")
            masks = unpack_masks(archive.read_bytes())
            init = prepare(RunConfig.from_dict(run.config).validate()).init_state
            measures = overlap(init, masks)
            print(f"{run_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in measures.items()))


if __name__ == "__main__":
    main()
