"""What the runner's tests share: cutting a run short and resuming it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file


class _Interrupt(Exception):
    pass


@pytest.fixture
def assert_cut_run_resumes(monkeypatch):
    """Returns ``check(make_config, tmp_path)``: trains ``make_config()`` whole, then again cut
    right after its second checkpoint and resumed; the two final models must be equal bit for
    bit."""
    from sparsebench.train import loop, train

    def check(make_config, tmp_path) -> None:
        train(make_config(), tmp_path / "whole", progress=False)
        original = loop._write_checkpoint
        calls = {"n": 0}

        def crash_after_second(*args, **kwargs):
            original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Interrupt

        monkeypatch.setattr(loop, "_write_checkpoint", crash_after_second)
        with pytest.raises(_Interrupt):
            train(make_config(), tmp_path / "cut", progress=False)
        monkeypatch.setattr(loop, "_write_checkpoint", original)
        train(make_config(), tmp_path / "cut", progress=False)
        whole = load_file(tmp_path / "whole" / "model.safetensors")
        cut = load_file(tmp_path / "cut" / "model.safetensors")
        assert whole.keys() == cut.keys()
        assert all(torch.equal(whole[k], cut[k]) for k in whole)

    return check
