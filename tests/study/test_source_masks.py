"""The packed masks kept beside a run store: bit order and padding worked by hand, a round trip
of odd shapes, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from sparsebench.study.source_masks import (
    archive_path,
    pack_masks,
    restore_source,
    unpack_masks,
)


def test_bits_are_packed_most_significant_first_and_padded_with_zeros():
    # 1000 0001 | 1 (then seven zero bits of padding): 0x81, 0x80.
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    data = pack_masks({"w": mask})
    assert load(data)["w"].tolist() == [0x81, 0x80]
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert json.loads(header["__metadata__"]["shapes"]) == {"w": [9]}
    assert torch.equal(unpack_masks(data)["w"], mask)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (16, 3, 3, 3), (0, 4)])
def test_round_trip_keeps_every_bit_and_shape(shape):
    generator = torch.Generator().manual_seed(sum(shape) + len(shape))
    masks = {"a.weight": torch.rand(shape, generator=generator) < 0.3,
             "b.weight": torch.ones(shape, dtype=torch.bool)}
    data = pack_masks(masks)
    back = unpack_masks(data)
    assert back.keys() == masks.keys()
    for name, mask in masks.items():
        assert back[name].dtype == torch.bool and torch.equal(back[name], mask)
    size = torch.Size(shape).numel()
    assert all(t.numel() == (size + 7) // 8 for t in load(data).values())  # a bit each


def test_refuses_what_is_not_a_packed_mask_file():
    with pytest.raises(ValueError, match="not a safetensors file"):
        unpack_masks(b"\x00" * 3)
    plain = save({"w": torch.ones(3, dtype=torch.bool)})  # a run directory's mask.safetensors
    with pytest.raises(ValueError, match="not a packed mask file"):
        unpack_masks(plain)


def test_restore_checks_the_store_record_of_the_source(tmp_path):
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    archive = archive_path(tmp_path / "study" / "x.db", "magnitude-s50-r0-abc")
    assert archive == tmp_path / "study" / "masks" / "magnitude-s50-r0-abc.safetensors"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(pack_masks({"fc.weight": mask}))
    config = {"task": "fmnist-lenet300"}
    wrong = [{"name": "fc.weight", "shape": [2, 3], "nonzeros": 4}]
    with pytest.raises(ValueError, match="keeps 3 of \\[2, 3\\] but the store records 4"):
        restore_source(archive, config, wrong, tmp_path / "run")
    missing = [{"name": "other.weight", "shape": [2, 3], "nonzeros": 3}]
    with pytest.raises(ValueError, match="has no mask for 'other.weight'"):
        restore_source(archive, config, missing, tmp_path / "run")
    assert not (tmp_path / "run").exists()
