"""scripts/mask_init_overlap.py, on a layer small enough to work by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mask_init_overlap.py"


def _script():
    spec = importlib.util.spec_from_file_location("mask_init_overlap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overlap_measures_worked_by_hand():
    # Two units of four inputs. The mask keeps 8 and 7 of the first unit and 3 of the second:
    # 3 of 8 weights. The three largest at init are 8, 7 and 6, so 2 of the 3 kept were
    # among them. Mean square: kept (64 + 49 + 9) / 3 = 40.67, all 204 / 8 = 25.5, so a
    # lottery ticket starts sqrt(40.67 / 25.5) = 1.263 times a fresh draw's RMS. Augmented
    # init scales unit one's two weights by sqrt(4/2) and unit two's one by sqrt(4/1): the
    # kept squares average (2 * 2 + 1 * 4) / 3 = 8/3 of a fresh draw's, an RMS of 1.633.
    init = {"w": torch.tensor([[8.0, 7.0, 2.0, 1.0], [-3.0, 6.0, 5.0, 4.0]])}
    masks = {"w": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.uint8)}
    measures = _script().overlap(init, masks)
    assert measures["density"] == pytest.approx(3 / 8)
    assert measures["kept among largest at init"] == pytest.approx(2 / 3)
    assert measures["lottery RMS / fresh RMS"] == pytest.approx(((122 / 3) / 25.5) ** 0.5)
    assert measures["augmented RMS / fresh RMS"] == pytest.approx((8 / 3) ** 0.5)
