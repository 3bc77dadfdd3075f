"""Nothing is lost on interruption: exact resume after SIGKILL/SIGINT/SIGTERM or a crash at any point of a
checkpoint write, safe (never unpickling, checksummed) loading, numerical safety and determinism."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fond
from fond.checkpoint import load_tensors, save_tensors
from fond.config import ModelConfig, TrainConfig
from fond.data import PatchData
from fond.errors import CheckpointError, FondError
from fond.resume import load_model
from fond.train import CHECKPOINT, PREVIOUS_CHECKPOINT, TrainingDiverged, TrainingInterrupted, train

# ----------------------------------------------------------------------------------------------------------------
# helpers


def _patches(n=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((6, d))
    codes = rng.poisson(0.3, (n, 6)) * rng.uniform(0.5, 1.5, (n, 6))
    x = codes @ atoms + 0.1 * rng.standard_normal((n, d))
    return (x / x.std()).astype(np.float32)


def _data():
    x = _patches()
    return PatchData(train=x[:-50], val=x[-50:], patch_shape=(4, 4), name="synthetic")


def _cfg(**kw):
    base = TrainConfig(steps=4, beta=1.0, iterations=24, batch_size=32, checkpoint_every=5, eval_every=10,
                       log_every=1, eval_steps=8, eval_samples=20, beta_ramp_fraction=0.3, warmup_fraction=0.05)
    return replace(base, **kw)


MC = ModelConfig(n_inputs=16, n_latents=8, init_scale=0.05)


def _assert_same_state(a: dict, b: dict, atol=1e-6):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key].double(), b[key].double(), atol=atol, rtol=0), key


def _checkpoint(directory):
    tensors, meta = load_tensors(Path(directory) / CHECKPOINT)
    return tensors, meta


def _rows(directory):
    """metrics.jsonl rows without the wall-clock column."""
    rows = [json.loads(line) for line in (Path(directory) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted in-process run of ``_cfg()``: its directory."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    train(_data(), _cfg(), out, model_config=MC, progress=False)
    return out


# ----------------------------------------------------------------------------------------------------------------
# exact resume, in process


@pytest.mark.parametrize("model, optimizer", [("ipvae", "adamax"), ("igvae-relu", "adamax"), ("savae", "adamax"),
                                              ("pvae", "adamax"), ("ista", "adamax"), ("lca", "sgd")])
def test_resume_is_exact_for_every_kind_of_model_state(tmp_path, model, optimizer):
    """Resuming must restore all state (Adamax moments and step counts, SGD's momentum, schedules, batch order,
    sampler streams, buffers such as the hybrid models' refine β, after_update renormalisation), else a resumed
    run drifts from the one it replaces."""
    mc = ModelConfig(n_inputs=16, n_latents=8, model=model, init_scale=0.05, encoder_hidden=16)
    cfg = _cfg(iterations=14, checkpoint_every=3, optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 5e-3)
    global_state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    straight = train(_data(), cfg, tmp_path / "a", model_config=mc, progress=False)
    # training draws nothing from the global generators, whose state no checkpoint could restore exactly
    assert torch.equal(global_state[0], torch.get_rng_state())
    assert np.array_equal(global_state[1], np.random.get_state()[1]) and global_state[2] == random.getstate()
    for stop in (4, 7, 11):  # stops between checkpoints: resumed from the stop's own checkpoint
        train(_data(), cfg, tmp_path / "b", model_config=mc, progress=False, stop_at=stop)
    train(_data(), cfg, tmp_path / "b", model_config=mc, progress=False)
    _assert_same_state(_checkpoint(tmp_path / "a")[0], _checkpoint(tmp_path / "b")[0], atol=0)
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    _assert_same_state(straight.model.state_dict(), load_model(tmp_path / "b").state_dict(), atol=0)


class _Crash(BaseException):
    """Stands for the process dying at this instant."""


def _count_replaces(tmp_path):
    calls = []
    real = os.replace

    def counting(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        return real(src, dst)

    os.replace = counting
    try:
        train(_data(), _cfg(iterations=12, checkpoint_every=3), tmp_path / "count", model_config=MC, progress=False)
    finally:
        os.replace = real
    return len(calls)


def test_crash_at_every_point_of_checkpoint_writing_resumes_exactly(tmp_path, monkeypatch):
    """A crash can land between any two renames of the write protocol (checkpoint rotation, new checkpoint,
    model files, log rewrite): every such state must still hold a complete checkpoint and resume exactly."""
    cfg = _cfg(iterations=12, checkpoint_every=3)
    straight = tmp_path / "straight"
    train(_data(), cfg, straight, model_config=MC, progress=False)
    n_calls = _count_replaces(tmp_path)
    assert n_calls >= 10
    real = os.replace
    for crash_at in range(1, n_calls + 1):
        run = tmp_path / f"crash{crash_at}"
        calls = []

        def crashing(src, dst, calls=calls, crash_at=crash_at):
            calls.append(1)
            if len(calls) == crash_at:
                raise _Crash
            return real(src, dst)

        monkeypatch.setattr(os, "replace", crashing)
        with pytest.raises(_Crash):
            train(_data(), cfg, run, model_config=MC, progress=False)
        monkeypatch.setattr(os, "replace", real)
        train(_data(), cfg, run, model_config=MC, progress=False)
        _assert_same_state(_checkpoint(straight)[0], _checkpoint(run)[0], atol=0)
        _assert_same_state(load_model(straight).state_dict(), load_model(run).state_dict(), atol=0)
        assert _rows(straight) == _rows(run), crash_at


def test_metrics_rows_cut_short_by_a_kill_are_dropped_not_fatal(tmp_path, baseline):
    """A kill mid-write can leave half a JSON line, and rows logged after the last checkpoint would otherwise
    appear twice after resuming."""
    run = tmp_path / "run"
    train(_data(), _cfg(), run, model_config=MC, progress=False, stop_at=10)
    with open(run / "metrics.jsonl", "a") as handle:  # what a killed run leaves: later rows, a cut line
        handle.write(json.dumps({"step": 11, "loss": 1.0}) + "\n" + '{"step": 12, "lo')
    train(_data(), _cfg(), run, model_config=MC, progress=False)
    assert _rows(run) == _rows(baseline)


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    """A process killed mid-write leaves its temp file; they must not pile up in the run directory."""
    run = tmp_path / "run"
    train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False, stop_at=3)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = run / f".{CHECKPOINT}.tmp-{dead}"
    stale.write_bytes(b"half a checkpoint")
    train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False)
    assert not stale.exists()


# ----------------------------------------------------------------------------------------------------------------
# corrupt, truncated, tampered, foreign and pickled files


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, baseline):
    """Storage can fail mid-file: the previous checkpoint must then be used (with a warning naming the bad
    file) and the run still ends where an uninterrupted one does."""
    run = tmp_path / "run"
    train(_data(), _cfg(), run, model_config=MC, progress=False, stop_at=15)
    assert _checkpoint(run)[1]["iteration"] == 15
    assert load_tensors(run / PREVIOUS_CHECKPOINT)[1]["iteration"] == 10
    raw = (run / CHECKPOINT).read_bytes()
    (run / CHECKPOINT).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(run / CHECKPOINT)
    with pytest.warns(UserWarning) as caught:
        train(_data(), _cfg(), run, model_config=MC, progress=False)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert str(run / CHECKPOINT) in messages[0] and "truncated" in messages[0] and "iteration 10" in messages[0]
    assert (run / (CHECKPOINT + ".corrupt")).exists()
    _assert_same_state(_checkpoint(baseline)[0], _checkpoint(run)[0], atol=0)
    assert _rows(run) == _rows(baseline)


def test_no_usable_checkpoint_is_a_one_line_error_naming_each_file(tmp_path):
    """With both checkpoints damaged nothing can be resumed: say so in one line, naming both files."""
    run = tmp_path / "run"
    train(_data(), _cfg(), run, model_config=MC, progress=False, stop_at=10)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[:100])
    with pytest.raises(CheckpointError) as info:
        train(_data(), _cfg(), run, model_config=MC, progress=False)
    message = str(info.value)
    assert "\n" not in message and "no usable checkpoint" in message
    assert str(run / CHECKPOINT) in message and str(run / PREVIOUS_CHECKPOINT) in message


def _saved(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5)}, {"iteration": 3})
    return path, path.read_bytes()


@pytest.mark.parametrize("damage, problem", [
    (lambda raw: b"", "empty file"),
    (lambda raw: raw[:5], "truncated"),
    (lambda raw: raw[: len(raw) - 7], "truncated"),
    (lambda raw: raw[:40], "truncated"),
    (lambda raw: raw[:8] + raw[8:].replace(b'"F32"', b'"F64"', 1), "truncated or corrupt"),
    (lambda raw: raw[:8] + raw[8:].replace(b"[3,4]", b"[4,3]", 1), "SHA-256"),
    (lambda raw: raw[:8] + raw[8:].replace(b"iteration", b"iteratioN", 1), "SHA-256"),
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01]), "SHA-256"),
    (lambda raw: raw[:8] + b"#" + raw[9:], "corrupt safetensors header"),
    (lambda raw: b"just some text, not a checkpoint at all", "not a safetensors file"),
])
def test_damaged_tensor_files_give_one_line_errors_naming_file_and_problem(tmp_path, damage, problem):
    """Truncated, bit-flipped or tampered (header or data) files must be refused, never half-loaded, with a
    message a user can act on."""
    path, raw = _saved(tmp_path)
    path.write_bytes(damage(raw))
    with pytest.raises(CheckpointError) as info:
        load_tensors(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and problem in message, message


def test_checkpoint_of_another_model_is_refused_naming_the_mismatch(tmp_path):
    """Loading another model's tensors (other K, other config) would fail deep in torch or silently mix runs:
    the error must be one line naming the mismatching key or shape."""
    small, big = tmp_path / "k8", tmp_path / "k12"
    fond.IPVAE(config=replace(MC, n_latents=8)).save(small)
    fond.IPVAE(config=replace(MC, n_latents=12)).save(big)
    (big / "model.safetensors").write_bytes((small / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_model(big)
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message and "has shape" in message and "(8," in message
    # a training run of another configuration: the differing key is named, nothing is overwritten
    run = tmp_path / "run"
    train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False)
    before = (run / CHECKPOINT).read_bytes()
    with pytest.raises(FondError, match=r"different configuration \(model\.n_latents is 8 in checkpoint"):
        train(_data(), _cfg(iterations=6), run, model_config=replace(MC, n_latents=12), progress=False)
    assert (run / CHECKPOINT).read_bytes() == before
    # same configuration in the metadata but tensors of another model (e.g. a hand-made file): key and shape named
    tensors, meta = load_tensors(run / CHECKPOINT)
    tensors["model.log_bias"] = torch.zeros(3)
    save_tensors(run / CHECKPOINT, tensors, meta)
    (run / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
    with pytest.raises(CheckpointError) as info:
        train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False)
    assert "\n" not in str(info.value) and "'model.log_bias' has shape (3,)" in str(info.value)


class _Payload:
    """Unpickling this creates a directory: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_no_loading_path_unpickles(tmp_path, monkeypatch):
    """A checkpoint or model file is untrusted input: a pickle in its place must be refused without ever
    being unpickled (unpickling runs arbitrary code)."""
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    zipped = tmp_path / "torch_save.pt"
    torch.save({"x": torch.ones(2)}, zipped)

    def forbidden(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)

    run = tmp_path / "run"
    fond.IPVAE(config=MC).save(run)
    for content in (payload, zipped.read_bytes()):
        (run / "model.safetensors").write_bytes(content)
        with pytest.raises(CheckpointError, match="not a safetensors file .*never unpickles"):
            load_model(run)
        (run / CHECKPOINT).write_bytes(content)
        with pytest.raises(CheckpointError, match="no usable checkpoint.*never unpickles"):
            train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False)
        with pytest.raises(CheckpointError, match="never unpickles"):
            load_tensors(run / CHECKPOINT)
    (run / "config.json").write_bytes(payload)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(run)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# numerical safety


def _poisoned(monkeypatch, at_call: int, kind: str):
    """Make the ``at_call``-th training loss (1-based) non-finite, or its gradient."""
    from fond.models.iterative import IterativeVAE

    original = IterativeVAE.unroll_loss
    calls = []

    class NanGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    def unroll_loss(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == at_call:
            out.loss = out.loss * float("inf") if kind == "loss" else NanGradient.apply(out.loss)
        return out

    monkeypatch.setattr(IterativeVAE, "unroll_loss", unroll_loss)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_stops_before_the_update(tmp_path, monkeypatch, kind):
    """A NaN must never reach the parameters or a checkpoint: training stops naming the step and the last
    good checkpoint, which holds the finite parameters of the iterations before it."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    train(_data(), _cfg(), reference, model_config=MC, progress=False, stop_at=12)
    _poisoned(monkeypatch, 13, kind)
    with pytest.raises(TrainingDiverged) as info:
        train(_data(), _cfg(), run, model_config=MC, progress=False)
    message = str(info.value)
    assert "\n" not in message and f"the {kind} became non-finite at step 13/24 (update not applied)" in message
    assert f"last good checkpoint: {run / CHECKPOINT} (iteration 12)" in message
    tensors, meta = _checkpoint(run)
    assert meta["iteration"] == 12 and all(torch.isfinite(t).all() for t in tensors.values())
    _assert_same_state(_checkpoint(reference)[0], tensors, atol=0)  # the bad update was not applied
    assert torch.isfinite(torch.cat([p.flatten() for p in load_model(run).parameters()])).all()


def test_non_finite_parameters_are_never_checkpointed(tmp_path, monkeypatch):
    """Even if an update itself overflows (finite loss and gradient), the NaN parameters are not written."""
    run = tmp_path / "run"
    train(_data(), _cfg(), run, model_config=MC, progress=False, stop_at=10)
    good = (run / CHECKPOINT).read_bytes()
    real_step = torch.optim.Adamax.step
    calls = []

    def overflowing_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adamax, "step", overflowing_step)
    with pytest.raises(TrainingDiverged, match=r"non-finite in the update of step 13/24; not saved; last good "
                                               rf"checkpoint: .*{CHECKPOINT} \(iteration 10\)"):
        train(_data(), _cfg(), run, model_config=MC, progress=False)
    assert (run / CHECKPOINT).read_bytes() == good


# ----------------------------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_results_for_training_and_inference(tmp_path):
    """Same seed, same machine: bitwise-equal trained parameters and inference results; another seed differs
    (so the seed really drives the randomness)."""
    a = train(_data(), _cfg(iterations=10), tmp_path / "a", model_config=MC, progress=False).model
    b = train(_data(), _cfg(iterations=10), tmp_path / "b", model_config=MC, progress=False).model
    c = train(_data(), _cfg(iterations=10, seed=1), tmp_path / "c", model_config=MC, progress=False).model
    _assert_same_state(a.state_dict(), b.state_dict(), atol=0)
    assert not torch.equal(a.decoder.dictionary, c.decoder.dictionary)
    x = torch.from_numpy(_data().val)
    global_state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first, second, other = a.infer(x, 30, seed=5), a.infer(x, 30, seed=5), a.infer(x, 30, seed=6)
    assert torch.equal(first.spikes, second.spikes) and torch.equal(first.rates, second.rates)
    assert all(np.array_equal(first.trace[k], second.trace[k]) for k in first.trace)
    assert not torch.equal(first.spikes, other.spikes)
    # no global generator is drawn from (by inference here, by training in the test below): a checkpoint's
    # iteration and seed then determine every random draw that follows
    assert torch.equal(global_state[0], torch.get_rng_state())
    assert np.array_equal(global_state[1], np.random.get_state()[1]) and global_state[2] == random.getstate()


# ----------------------------------------------------------------------------------------------------------------
# real processes: SIGKILL at random moments, SIGINT/SIGTERM, `fond train --resume DIR`

ITERATIONS = 60


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    """A patch file, a training config that checkpoints every iteration, and the uninterrupted run's result."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "patches.npy", _patches())
    config = {"iterations": ITERATIONS, "batch_size": 32, "steps": 4, "beta": 1.0, "checkpoint_every": 1,
              "eval_every": 25, "log_every": 1, "eval_steps": 8, "eval_samples": 20, "warmup_fraction": 0.05}
    (root / "train.json").write_text(json.dumps(config))
    # the uninterrupted reference checkpoints rarely (checkpointing must not change the result) to be quick
    (root / "straight.json").write_text(json.dumps({**config, "checkpoint_every": 1000}))
    straight = root / "straight"
    proc = _fond(*_first_args(root, straight, "straight.json"))
    assert proc.returncode == 0, proc.stderr
    return root, straight


def _first_args(root, out, config="train.json"):
    return ("train", "--data", str(root / "patches.npy"), "--out", str(out), "--latents", "8", "--config",
            str(root / config), "--no-progress", "--no-eval")


def _resume_args(out):
    return ("train", "--resume", str(out), "--no-progress", "--no-eval")


def _fond(*args):
    return subprocess.run([sys.executable, "-m", "fond", *args], capture_output=True, text=True, timeout=300)


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "fond", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _max_step(out):
    try:
        text = (out / "metrics.jsonl").read_text()
    except OSError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps)


def _wait_for_step(proc, out, step):
    """Until the run has logged ``step`` (or finished); False if it finished."""
    deadline = time.monotonic() + 120
    while _max_step(out) < step:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.01)
    return proc.poll() is None


def _assert_matches_straight(out, straight):
    mine, theirs = _checkpoint(out), _checkpoint(straight)
    assert mine[1]["iteration"] == theirs[1]["iteration"] == ITERATIONS
    _assert_same_state(theirs[0], mine[0], atol=1e-6)
    _assert_same_state(load_model(straight).state_dict(), load_model(out).state_dict(), atol=1e-6)
    assert _rows(out) == _rows(straight)  # every step logged once, with the same values


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(cli_setup):
    """A run killed without warning (OOM killer, power loss, preemption), several times, at random moments,
    must resume with `fond train --resume DIR` and end with exactly the uninterrupted run's parameters and
    log. Every other kill comes within 30 ms of a logged step, i.e. mostly inside that step's checkpoint
    write (the deterministic crash-point test above covers each point of the write protocol)."""
    root, straight = cli_setup
    out = root / "killed"
    rng = random.Random(7)
    kills = 0
    args = _first_args(root, out)
    for attempt in range(5):
        proc = _popen(*args)
        target = _max_step(out) + 1  # progress beyond what earlier incarnations logged
        if _wait_for_step(proc, out, target):
            time.sleep(rng.uniform(0.0, 0.03 if attempt % 2 == 0 else 0.25))
            proc.kill()
            kills += proc.wait() == -signal.SIGKILL
        else:
            proc.wait()
        if (out / CHECKPOINT).exists() or (out / PREVIOUS_CHECKPOINT).exists():
            args = _resume_args(out)
    assert kills >= 3
    finish = _fond(*_resume_args(out))
    assert finish.returncode == 0, finish.stderr
    assert "Traceback" not in finish.stderr
    _assert_matches_straight(out, straight)
    assert not list(out.glob(".*.tmp-*"))


@pytest.mark.slow
def test_sigint_and_sigterm_checkpoint_then_resume_equals_uninterrupted_run(cli_setup):
    """Ctrl-C or a scheduler's SIGTERM must save the finished iterations, say in one line where and how to
    resume, and the resumed run must end exactly where an uninterrupted one does."""
    root, straight = cli_setup
    out = root / "signalled"
    args = _first_args(root, out)
    done = 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = _popen(*args)
        assert _wait_for_step(proc, out, done + 5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith("fond: interrupted after "), err
        done = _checkpoint(out)[1]["iteration"]
        assert f"after {done} of {ITERATIONS} iterations" in last and f"fond train --resume {out}" in last
        assert done < ITERATIONS
        args = _resume_args(out)
    finish = _fond(*args)
    assert finish.returncode == 0, finish.stderr
    _assert_matches_straight(out, straight)


@pytest.mark.slow
def test_cli_resume_warns_in_one_line_and_refuses_configuration_flags(cli_setup):
    """`fond train --resume DIR` takes everything from the checkpoint: a truncated newest checkpoint gives one
    warning line naming it (and the run still ends equal to the uninterrupted one); configuration flags
    beside --resume are refused rather than silently ignored."""
    root, straight = cli_setup
    out = root / "truncated"
    proc = _popen(*_first_args(root, out))
    assert _wait_for_step(proc, out, 4)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    raw = (out / CHECKPOINT).read_bytes()
    (out / CHECKPOINT).write_bytes(raw[: len(raw) // 3])
    refused = _fond("train", "--resume", str(out), "--beta", "3")
    assert refused.returncode == 2 and "drop --beta" in refused.stderr
    finish = _fond(*_resume_args(out))
    assert finish.returncode == 0, finish.stderr
    warnings = [line for line in finish.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"fond: warning: {out / CHECKPOINT}: truncated")
    _assert_matches_straight(out, straight)
    missing = _fond("train", "--resume", str(root / "nothing-here"))
    assert missing.returncode == 2 and "nothing-here" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_interruption_is_reported_with_the_checkpoint(tmp_path, monkeypatch):
    """In-process: a SIGINT-like interruption between iterations checkpoints the completed ones and says so."""
    from fond import train as train_module

    calls = []
    real = train_module.Schedule.beta

    def interrupting_beta(self, iteration):
        calls.append(iteration)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)  # deferred to the end of this iteration
        return real(self, iteration)

    monkeypatch.setattr(train_module.Schedule, "beta", interrupting_beta)
    with pytest.raises(TrainingInterrupted) as info:
        train(_data(), _cfg(), tmp_path / "run", model_config=MC, progress=False)
    assert info.value.iteration == 8 and info.value.checkpoint == tmp_path / "run" / CHECKPOINT
    assert _checkpoint(tmp_path / "run")[1]["iteration"] == 8


def test_second_interruption_stops_at_once_and_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch, baseline):
    """A second Ctrl-C can land mid-update, where saving would record a half-applied step: nothing is saved,
    the previous checkpoint stays valid and resuming from it still ends like the uninterrupted run."""
    from fond import train as train_module

    calls = []
    real = train_module.Schedule.beta

    def interrupting_beta(self, iteration):
        calls.append(iteration)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, iteration)

    monkeypatch.setattr(train_module.Schedule, "beta", interrupting_beta)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted twice") as info:
        train(_data(), _cfg(), run, model_config=MC, progress=False)
    assert info.value.iteration == 5 and _checkpoint(run)[1]["iteration"] == 5
    monkeypatch.setattr(train_module.Schedule, "beta", real)
    train(_data(), _cfg(), run, model_config=MC, progress=False)
    _assert_same_state(_checkpoint(baseline)[0], _checkpoint(run)[0], atol=0)
    assert _rows(run) == _rows(baseline)
