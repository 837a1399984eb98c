"""The runner: config validation, results, resume after SIGKILL, divergence, DDP, retraining."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsebench.data.ding import DING_DICT_PATH
from sparsebench.train import build_config, learning_rate_factor, train
from sparsebench.train.config import OptimConfig

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(),
                                  reason="Fashion-MNIST missing: apt-get install "
                                         "dataset-fashion-mnist")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU here; CI never has one")
QUICK = ["data.limit_train=2000", "data.valid_size=1000", "eval.batch_size=1000",
         "run.log_every=1000"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="nope"), "Unknown task 'nope'"),
        (dict(task="fmnist-lenet300", method="prune"), "Unknown sparsification method"),
        (dict(task="fmnist-lenet300", method="magnitude"),
         r"sparsity.sparsity = None is invalid: it must be in \[0, 1\) for magnitude"),
        (dict(task="fmnist-lenet300", method="magnitude", sparsity=1.2),
         r"sparsity.sparsity = 1.2 is invalid"),
        (dict(task="fmnist-lenet300", method="vd", sparsity=0.9),
         "must be null for variational_dropout"),
        (dict(task="fmnist-lenet300", steps=0), "run.steps = 0 is invalid"),
        (dict(task="fmnist-lenet300", overrides=["optim.lr=-1"]), "optim.lr = -1.0 is invalid"),
        (dict(task="fmnist-lenet300", overrides=["optim.name=rmsprop"]),
         "optim.name = 'rmsprop' is invalid"),
        (dict(task="fmnist-lenet300", overrides=["optim.lrr=0.1"]),
         "Unknown config key 'optim.lrr'"),
        (dict(task="fmnist-lenet300", overrides=["bogus.x=1"]), "Unknown config section"),
        (dict(task="fmnist-lenet300", overrides=["optim.lr"]), "must look like section.key"),
        (dict(task="fmnist-lenet300", overrides=["run.steps=many"]),
         "run.steps = 'many' is invalid: it must be an integer"),
        (dict(task="fmnist-lenet300", method="vd", overrides=["sparsity.kl_wieght=1"]),
         r"Unknown hyperparameter\(s\) \['kl_wieght'\]"),
        (dict(task="fmnist-lenet300", overrides=["model.name=resnet1000"]),
         "model.name = 'resnet1000' is invalid"),
        (dict(task="fmnist-lenet300", overrides=["model.options.depth=3"]),
         "model.options = \\['depth'\\] is invalid"),
        (dict(task="imagenet-resnet50"), "data.root = None is invalid"),
        (dict(task="fmnist-lenet300", overrides=["sparsity.begin=1.5"]),
         "sparsity.begin = 1.5 is invalid"),
        (dict(task="fmnist-lenet300", overrides=["optim.schedule=inverse_sqrt",
                                                 "optim.warmup_steps=0"]),
         "positive for the inverse_sqrt schedule"),
    ],
)
def test_bad_config_gets_one_clear_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_config(**kwargs)


def test_a_shorter_run_checkpoints_at_the_same_fraction_of_its_steps():
    # The fmnist-resnet preset: 4,000 steps, a checkpoint every 400 and a log line every 40.
    # A sweep's 600-step run keeps those tenths and hundredths of its own steps.
    full = build_config("fmnist-resnet")
    assert (full.run.steps, full.run.checkpoint_every, full.run.log_every) == (4000, 400, 40)
    short = build_config("fmnist-resnet", steps=600)
    assert (short.run.checkpoint_every, short.run.log_every) == (60, 6)
    by_set = build_config("fmnist-resnet", overrides=["run.steps=900"])
    assert (by_set.run.checkpoint_every, by_set.run.log_every) == (90, 9)
    tiny = build_config("fmnist-resnet", steps=5)
    assert (tiny.run.checkpoint_every, tiny.run.log_every) == (1, 1)
    # What the caller chose stays as chosen, even the preset's own number.
    chosen = build_config("fmnist-resnet", steps=600, overrides=["run.checkpoint_every=250"])
    assert (chosen.run.checkpoint_every, chosen.run.log_every) == (250, 6)
    same = build_config("fmnist-resnet", steps=600, values={"run": {"log_every": 40}})
    assert (same.run.checkpoint_every, same.run.log_every) == (60, 40)


def test_learning_rate_schedules_by_hand():
    cosine = OptimConfig(schedule="cosine", warmup_steps=10)
    assert learning_rate_factor(cosine, 4, 110) == pytest.approx(0.5)
    assert learning_rate_factor(cosine, 60, 110) == pytest.approx(0.5)  # halfway after warmup
    assert learning_rate_factor(cosine, 110, 110) == pytest.approx(0.0)
    step = OptimConfig(schedule="step", decay_at=(0.5, 0.75), decay_factor=0.1)
    assert learning_rate_factor(step, 49, 100) == 1.0
    assert learning_rate_factor(step, 50, 100) == pytest.approx(0.1)
    assert learning_rate_factor(step, 80, 100) == pytest.approx(0.01)
    inv = OptimConfig(schedule="inverse_sqrt", warmup_steps=100)
    assert learning_rate_factor(inv, 49, 1000) == pytest.approx(0.5)
    assert learning_rate_factor(inv, 99, 1000) == pytest.approx(1.0)
    assert learning_rate_factor(inv, 399, 1000) == pytest.approx(0.5)


def _config(method="magnitude", sparsity=0.8, steps=40, extra=()):
    return build_config("fmnist-lenet300", method=method, sparsity=sparsity, steps=steps,
                        overrides=[*QUICK, *extra])


@needs_fmnist
def test_without_a_bar_progress_goes_to_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sparsebench.train")
    train(_config(steps=10, extra=("run.log_every=5",)), tmp_path / "run", progress=False)
    steps = [r.getMessage().split()[1] for r in caplog.records
             if r.getMessage().startswith("step ")]
    assert steps == ["5/10", "10/10"]
    # ... and to progress.json, for `sparsebench status`.
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert (progress["step"], progress["steps"], progress["eta_seconds"]) == (10, 10, 0.0)
    assert progress["steps_per_second"] > 0 and math.isfinite(progress["loss"])


@needs_fmnist
def test_result_json_schema_and_files(tmp_path):
    result = train(_config(), tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored == json.loads(json.dumps(result))
    for key in ("status", "task", "method", "target_sparsity", "sparsity", "layers", "metric",
                "metrics", "steps", "train_seconds", "seconds_per_step", "flops", "config",
                "seed", "versions"):
        assert key in stored, key
    assert stored["status"] == "finished" and stored["steps"] == 40
    assert 0.0 <= stored["metric"]["test"] <= 1.0 and stored["metric"]["name"] == "top1"
    # Achieved sparsity counted independently from the saved weights.
    weights = load_file(tmp_path / "run" / "model.safetensors")
    zeros = sum(int((weights[f"fc{i}.weight"] == 0).sum()) for i in (1, 2, 3))
    size = sum(weights[f"fc{i}.weight"].numel() for i in (1, 2, 3))
    assert stored["sparsity"] == pytest.approx(zeros / size) == pytest.approx(0.8, abs=1e-4)
    masks = load_file(tmp_path / "run" / "mask.safetensors")
    assert torch.equal(masks["fc1.weight"], weights["fc1.weight"] != 0)
    assert set(load_file(tmp_path / "run" / "init.safetensors")) == set(weights)
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert stored["flops"]["dense"] == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    # A finished directory is not trained again.
    started = time.perf_counter()
    assert train(_config(), tmp_path / "run", progress=False)["train_seconds"] == \
        stored["train_seconds"]
    assert time.perf_counter() - started < 5


def _cli(out, *extra, method=("--method", "magnitude", "--sparsity", "0.8")):
    return [sys.executable, "-m", "sparsebench", "train", "--task", "fmnist-lenet300",
            *method, "--steps", "60", "--no-progress",
            "--out", str(out), *(f"--set={item}" for item in QUICK),
            "--set", "run.checkpoint_every=10", "--set", "data.augment=true", *extra]


@needs_fmnist
@pytest.mark.parametrize("method", [
    ("--method", "magnitude", "--sparsity", "0.8"),
    # The newer techniques through a real SIGKILL, not only the in-process cut below: RigL's
    # regrowth from the resumed run's gradients, with updates after the cut at step 10. SET
    # (regrowth drawn from the generator), DNS (revival every step) and IMP (rewind state,
    # later rounds) are in the slow run: the in-process cut covers them by default, and each
    # killed-process case adds about 15 s to the default run.
    ("--method", "rigl", "--sparsity", "0.8", "--set", "sparsity.begin=0",
     "--set", "sparsity.end=1.0", "--set", "sparsity.frequency=5"),
    pytest.param(("--method", "set", "--sparsity", "0.8", "--set", "sparsity.begin=0",
                  "--set", "sparsity.end=1.0", "--set", "sparsity.frequency=5"),
                 marks=pytest.mark.slow, id="set"),
    pytest.param(("--method", "dns"), marks=pytest.mark.slow, id="dns"),
    pytest.param(("--method", "imp", "--sparsity", "0.8", "--set", "sparsity.rounds=3",
                  "--set", "sparsity.rewind_step=3"), marks=pytest.mark.slow, id="imp"),
], ids=["magnitude", "rigl", "set", "dns", "imp"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, method):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tmp_path / "whole", method=method), check=True, env=env,
                   capture_output=True)
    process = subprocess.Popen(_cli(tmp_path / "killed", method=method), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint" / "state.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "result.json").exists(), "killed too late to test resume"
    subprocess.run(_cli(tmp_path / "killed", method=method), check=True, env=env,
                   capture_output=True)
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name
    a = json.loads((tmp_path / "whole" / "result.json").read_text())
    b = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert a["metrics"] == b["metrics"]


@needs_fmnist
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("method, sparsity, extra", [
    ("vd", None, ["sparsity.kl_weight=1e-5", "sparsity.warmup_end=0.5"]),
    ("l0", None, ["sparsity.l0_weight=1e-5"]),
    ("magnitude", 0.8, []),
    # Mask updates every 5 steps to the end, so some fall after the cut at step 20 (RigL's
    # from the gradients of the resumed run's own backward passes).
    ("set", 0.8, ["sparsity.begin=0", "sparsity.end=1.0", "sparsity.frequency=5"]),
    ("rigl", 0.8, ["sparsity.begin=0", "sparsity.end=1.0", "sparsity.frequency=5"]),
    ("dns", None, []),
    # Four trainings (starts 7, 15, 22): cut at step 20, after the rewind point (step 3) and
    # two prunings, so the round starting at 22 rewinds to the point the checkpoint carried.
    ("imp", 0.8, ["sparsity.rounds=3", "sparsity.rewind_step=3"]),
    # The sparse training step: layouts rebuilt at mask updates, around the checkpoints.
    ("set", 0.8, ["sparsity.begin=0", "sparsity.end=1.0", "sparsity.frequency=5",
                  "run.sparse_step=on"]),
    ("rigl", 0.8, ["sparsity.begin=0", "sparsity.end=1.0", "sparsity.frequency=5",
                   "run.sparse_step=on"]),
    ("imp", 0.8, ["sparsity.rounds=3", "sparsity.rewind_step=3", "run.sparse_step=on"]),
    ("magnitude", 0.8, ["sparsity.end=0.5", "run.sparse_step=on"]),
])
def test_a_cut_run_resumes_bit_identically(tmp_path, assert_cut_run_resumes, method, sparsity,
                                          extra, device):
    # On a GPU the noise is drawn from the CUDA generator, which the checkpoint must carry too.
    extra = [*extra, "run.checkpoint_every=10", f"run.device={device}"]
    assert_cut_run_resumes(
        lambda: _config(method, sparsity, 30, extra), tmp_path)


@needs_fmnist
@pytest.mark.parametrize("method, sparsity, extra", [
    ("vd", None, ["sparsity.kl_weight=1e-5"]),
    ("l0", None, ["sparsity.l0_weight=1e-5"]),
])
def test_a_cut_channels_last_conv_run_resumes_bit_identically(tmp_path, assert_cut_run_resumes,
                                                               method, sparsity, extra):
    # LeNet-5 trains channels-last ("auto"); its checkpoint is written NCHW (safetensors) and
    # read back into the channels-last model and optimizer state.
    def config():
        return build_config("fmnist-lenet5", method=method, sparsity=sparsity, steps=30,
                            overrides=[*QUICK, *extra, "run.checkpoint_every=10"])

    assert_cut_run_resumes(config, tmp_path)
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["memory_format"] == "channels_last"


@needs_fmnist
def test_the_layout_changes_the_speed_not_the_function(tmp_path):
    # Dense LeNet-5, same seed and batches, NCHW against channels-last: after 5 SGD steps
    # the two models differ by float rounding only, and evaluate alike.
    results, weights = {}, {}
    for layout in ("contiguous", "channels_last"):
        config = build_config("fmnist-lenet5", steps=5, overrides=[
            *QUICK, "optim.name=sgd", "optim.lr=0.05", f"run.memory_format={layout}"])
        results[layout] = train(config, tmp_path / layout, progress=False)
        weights[layout] = load_file(tmp_path / layout / "model.safetensors")
    assert results["contiguous"]["memory_format"] == "contiguous_format"
    assert results["channels_last"]["memory_format"] == "channels_last"
    for name, tensor in weights["contiguous"].items():
        assert torch.allclose(tensor, weights["channels_last"][name], atol=1e-5), name
    assert results["contiguous"]["metrics"]["test"]["loss"] == pytest.approx(
        results["channels_last"]["metrics"]["test"]["loss"], rel=1e-4)


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="run.memory_format = 'nhwc' is invalid"):
        build_config("fmnist-lenet5", overrides=["run.memory_format=nhwc"])


@needs_fmnist
@pytest.mark.parametrize("method, extra, sparse_steps", [
    # Gradual pruning to step 12 of 24 ("update": pruned weights train until then).
    ("magnitude", ["sparsity.end=0.5"], 12),
    # SET from the first step, its masks moving every 4 steps; checkpoints every 6 steps.
    ("set", ["sparsity.begin=0", "sparsity.end=1.0", "sparsity.frequency=4"], 24),
])
def test_the_sparse_step_trains_what_the_dense_path_trains(tmp_path, method, extra,
                                                           sparse_steps):
    extra = [*extra, "run.checkpoint_every=6", "eval.every=8"]
    results = {mode: train(_config(method, 0.9, 24, [*extra, f"run.sparse_step={mode}"]),
                           tmp_path / mode, progress=False) for mode in ("off", "on")}
    on, off = results["on"], results["off"]
    assert "sparse_step" not in off
    assert on["sparse_step"]["steps"] == sparse_steps
    assert on["sparse_step"]["layers"] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for split in ("valid", "test"):
        assert on["metrics"][split]["loss"] == pytest.approx(off["metrics"][split]["loss"],
                                                             rel=1e-4)
    a, b = (load_file(tmp_path / mode / "model.safetensors") for mode in ("off", "on"))
    for name, tensor in a.items():
        assert torch.equal(tensor != 0, b[name] != 0), name  # the same masks
        assert torch.allclose(tensor, b[name], rtol=1e-3, atol=1e-5), name


def test_a_bad_sparse_step_is_refused():
    with pytest.raises(ValueError, match="run.sparse_step = 'maybe' is invalid: it must be "
                                         "'off' or 'on' or 'auto'"):
        build_config("fmnist-lenet300", overrides=["run.sparse_step=maybe"])
    # A bare on/off (YAML's true/false) means the mode of that name.
    assert build_config("fmnist-lenet300", overrides=["run.sparse_step=on"]).run.sparse_step \
        == "on"


@needs_fmnist
def test_a_diverging_loss_stops_with_a_clear_status(tmp_path):
    config = _config(extra=["optim.lr=1e12", "optim.warmup_steps=0", "optim.schedule=constant"])
    result = train(config, tmp_path / "run", progress=False)
    assert result["status"] == "diverged"
    assert "the loss became" in result["error"]
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["status"] == "diverged"
    assert not (tmp_path / "run" / "model.safetensors").exists()


@needs_fmnist
def test_retraining_with_a_fixed_mask_and_the_lottery_init(tmp_path):
    train(_config(sparsity=0.9), tmp_path / "pruned", progress=False)
    source = tmp_path / "pruned"
    for name, extra in [("lottery", [f"sparsity.init_from={source / 'init.safetensors'}"]),
                        ("augmented", ["sparsity.augmented_init=true"])]:
        train(_config(sparsity=0.9, extra=[f"sparsity.mask_from={source / 'mask.safetensors'}",
                                           *extra]), tmp_path / name, progress=False)
        masks = load_file(source / "mask.safetensors")
        weights = load_file(tmp_path / name / "model.safetensors")
        for layer, mask in masks.items():
            # Exactly the given architecture: pruned weights zero, every kept weight trained.
            assert torch.equal(weights[layer] != 0, mask), (name, layer)
        assert load_file(tmp_path / name / "mask.safetensors").keys() == masks.keys()
    lottery_init = load_file(tmp_path / "lottery" / "init.safetensors")
    assert torch.equal(lottery_init["fc1.weight"],
                       load_file(source / "init.safetensors")["fc1.weight"])


@needs_fmnist
def test_initial_weights_come_back_from_the_config_alone(tmp_path):
    from sparsebench.train.loop import write_initial_weights

    train(_config(sparsity=0.9, steps=5), tmp_path / "run", progress=False)
    init = tmp_path / "run" / "init.safetensors"
    original = load_file(init)
    init.unlink()  # as a run directory brought back from another machine without it
    assert write_initial_weights(tmp_path / "run") == init
    again = load_file(init)
    assert again.keys() == original.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)


@needs_fmnist
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["--task", "fmnist-lenet300", "--method", "magnitude", "--sparsity", "0.7",
              "--steps", "30", "--no-progress", *(f"--set={item}" for item in QUICK)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "sparsebench", "train", *common, "--out",
                    str(tmp_path / "one")], check=True, env=env, capture_output=True)
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m",
                           "sparsebench", "train", *common, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one = load_file(tmp_path / "one" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    for name in one:
        # Same data, same global batch; only the order of floating-point sums differs.
        assert torch.allclose(one[name], two[name], atol=1e-4, rtol=1e-3), name
    masks_one = load_file(tmp_path / "one" / "mask.safetensors")
    masks_two = load_file(tmp_path / "two" / "mask.safetensors")
    agree = [float((masks_one[k] == masks_two[k]).float().mean()) for k in masks_one]
    assert min(agree) > 0.999
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2
    assert math.isclose(result["sparsity"], 0.7, abs_tol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not DING_DICT_PATH.is_file(),
                    reason="Ding dictionary not installed (apt-get install dict-freedict-eng-deu)")
def test_a_cut_translation_run_resumes_bit_identically(tmp_path, assert_cut_run_resumes):
    # Token-count batches, dropout and label smoothing: the translation task's own state must
    # come back from the checkpoint as exactly as the image task's.
    extra = ["data.limit_train=3000", "run.checkpoint_every=10", "eval.max_valid=50",
             "eval.max_test=50"]
    assert_cut_run_resumes(
        lambda: build_config("ding-transformer", steps=30, overrides=extra), tmp_path)
