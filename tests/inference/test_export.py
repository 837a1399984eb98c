"""save_sparse / load_sparse: exact round trip, compact indices, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparsebench.inference import SparseFileError, SparseLinear, load_sparse, save_sparse


def _sparse_model() -> nn.Sequential:
    m = nn.Sequential(
        nn.Linear(50, 64),
        nn.ReLU(),
        nn.LayerNorm(64),
        nn.Linear(64, 32, bias=False),
        nn.Dropout(0.1),
        nn.Linear(32, 3),
    )
    with torch.no_grad():
        m[0].weight.mul_(torch.rand_like(m[0].weight) < 0.1)
        m[3].weight.mul_(torch.rand_like(m[3].weight) < 0.2)
    m[0] = SparseLinear.from_linear(m[0])
    m[3] = SparseLinear.from_linear(m[3])
    return m.eval()


def test_round_trip_is_exact(tmp_path):
    model = _sparse_model()
    report = save_sparse(model, tmp_path / "m.safetensors")
    assert report.sparse_layers == 2 and report.file_bytes < report.dense_bytes
    loaded = load_sparse(tmp_path / "m.safetensors")
    assert isinstance(loaded[0], SparseLinear) and isinstance(loaded[3], SparseLinear)
    assert isinstance(loaded[2], nn.LayerNorm) and loaded[3].bias is None
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == v.dtype and torch.equal(got, v), k
    x = torch.randn(5, 50)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.get_tensor("0.col_indices").dtype == torch.int16


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)))


def test_custom_model_needs_skeleton(tmp_path):
    model = Custom()
    with torch.no_grad():
        model.fc.weight.mul_(torch.rand_like(model.fc.weight) < 0.5)
    model.fc = SparseLinear.from_linear(model.fc)
    save_sparse(model, tmp_path / "c.safetensors")
    with pytest.raises(SparseFileError, match="model=") as err:
        load_sparse(tmp_path / "c.safetensors")
    assert "Custom" in str(err.value)
    loaded = load_sparse(tmp_path / "c.safetensors", model=Custom())
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_sparse(_sparse_model(), path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(SparseFileError, match="truncated or corrupt"):
            load_sparse(bad)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(SparseFileError, match="checksum"):
        load_sparse(bad)


def test_foreign_file_and_missing_file(tmp_path):
    other = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(SparseFileError, match="not a sparsebench"):
        load_sparse(other)
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "nope.safetensors")


def test_registry_transformer_with_a_sparse_tied_output_round_trips(tmp_path):
    """The output projection over a pruned shared embedding is exported sparse and comes back
    into the registry's skeleton: same decoding, no training code needed."""
    from sparsebench.inference import compact_sparse
    from sparsebench.models import create

    options = {"vocab_size": 60}
    model = create("transformer-tiny", **options).eval()
    with torch.no_grad():
        for m in [model.embed, *[m for m in model.modules() if isinstance(m, nn.Linear)]]:
            m.weight.mul_(torch.rand_like(m.weight) < 0.1)
    compact, _ = compact_sparse(model)
    assert isinstance(compact.output_projection, SparseLinear)
    save_sparse(compact, tmp_path / "t.safetensors",
                model_spec={"name": "transformer-tiny", "options": options})
    loaded = load_sparse(tmp_path / "t.safetensors")
    assert isinstance(loaded.output_projection, SparseLinear)
    src = torch.randint(4, 60, (2, 7))
    with torch.no_grad():
        expected = model.greedy_decode(src, max_len=5)
        assert torch.equal(loaded.greedy_decode(src, max_len=5), expected)
