"""The run folder: one writer at a time (a lock naming its holder, gone with its process), one atomic writer
whose failures (full disk, read-only folder) are one line and leave the last good file intact, and file
names that old runs keep."""

import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fond.run
from fond.checkpoint import load_tensors
from fond.cli import main
from fond.config import ModelConfig, TrainConfig
from fond.data import PatchData
from fond.errors import FondError, RunInUseError, StorageError
from fond.resume import load_model
from fond.run import CHECKPOINT, PREVIOUS_CHECKPOINT, RunFolder, atomic_write, write_npz
from fond.train import train


def _patches(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(0.3, (n, 6)) @ rng.standard_normal((6, d)) + 0.1 * rng.standard_normal((n, d))
    return (x / x.std()).astype(np.float32)


def _data():
    x = _patches()
    return PatchData(train=x[:-50], val=x[-50:], patch_shape=(4, 4), name="synthetic")


def _cfg(**kw):
    base = TrainConfig(steps=4, beta=1.0, iterations=12, batch_size=32, checkpoint_every=3, eval_every=6,
                       log_every=1, eval_steps=8, eval_samples=20, warmup_fraction=0.05)
    return replace(base, **kw)


MC = ModelConfig(n_inputs=16, n_latents=8, init_scale=0.05)


def _temporaries(directory: Path) -> list[Path]:
    return list(directory.glob(".*.tmp-*"))


def _run_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# the names


def test_file_names_are_those_of_existing_runs(tmp_path):
    """Old run folders must keep loading: the names on disk are fixed, only who spells them changed."""
    folder = RunFolder(tmp_path / "r")
    assert os.fspath(folder) == str(tmp_path / "r")
    names = {folder.config_path: "config.json", folder.model_path: "model.safetensors",
             folder.checkpoint_path: "checkpoint.safetensors",
             folder.previous_checkpoint_path: "checkpoint.prev.safetensors", folder.metrics_path: "metrics.jsonl",
             folder.done_path: "done.json", folder.report_path: "report/report.md",
             folder.eval_path: "report/eval.json", folder.trace_path: "report/trace.npz",
             folder.report_file("dictionary.png"): "report/dictionary.png"}
    for path, name in names.items():
        assert path == tmp_path / "r" / name
    train(_data(), _cfg(iterations=3), folder, model_config=MC, progress=False)
    assert folder.checkpoints() == [folder.checkpoint_path]
    assert {p.name for p in folder.path.iterdir()} >= {"config.json", "model.safetensors", CHECKPOINT,
                                                       "metrics.jsonl"}
    assert not folder.lock_path.exists()  # removed by its holder on release
    folder.write_trace({"r2": [0.1, 0.2]})
    folder.write_done({"r2": 0.2})
    assert folder.is_finished() and json.loads(folder.done_path.read_text()) == {"r2": 0.2}
    with np.load(folder.trace_path, allow_pickle=False) as npz:
        assert npz["r2"].dtype == np.float64 and npz["r2"].tolist() == [0.1, 0.2]


# ----------------------------------------------------------------------------------------------------------------
# the atomic writer


def _failing_fsync(monkeypatch, code=errno.ENOSPC, after: int = 0):
    """From the ``after+1``-th call on, ``os.fsync`` of a file fails with ``code`` (a full disk shows up at
    the latest there: the data must reach the disk)."""
    real = os.fsync
    calls = []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return real(fd)  # the folder's fsync after a rename
        calls.append(fd)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("payload", [b"new bytes", "new text", lambda handle: handle.write(b"new via handle")])
def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, payload):
    """ENOSPC mid-write: one line naming the file and the cause; the old file and nothing else remains."""
    path = tmp_path / "file.bin"
    atomic_write(path, b"old")
    _failing_fsync(monkeypatch)
    with pytest.raises(StorageError) as info:
        atomic_write(path, payload, keep_previous=tmp_path / "file.prev")
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert path.read_bytes() == b"old" and not (tmp_path / "file.prev").exists()
    assert not _temporaries(tmp_path)


def test_write_errors_of_every_kind_are_one_line(tmp_path, monkeypatch):
    """A read-only file system, a missing permission or a folder in the way: one line, never a traceback."""
    for code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
        monkeypatch.undo()
        _failing_fsync(monkeypatch, code)
        with pytest.raises(StorageError, match=f"^cannot write .*x.json: {os.strerror(code)}$"):
            atomic_write(tmp_path / "x.json", "{}")
    monkeypatch.undo()
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(StorageError, match="blocker exists and is not a folder"):
        write_npz(tmp_path / "blocker" / "trace.npz", {"a": np.zeros(2)})
    assert isinstance(StorageError("x"), FondError)


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Training stops with one line naming the checkpoint, the cause and the last good checkpoint, which
    stays loadable; resuming once there is space again ends where an uninterrupted run does."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(_data(), _cfg(), straight, model_config=MC, progress=False)
    armed = []

    def arm(done, model):  # after the checkpoint of iteration 6 (checkpoints every 3) the disk is full
        if done == 7:
            armed.append(_failing_fsync(monkeypatch))

    with pytest.raises(StorageError) as info:
        train(_data(), _cfg(), run, model_config=MC, progress=False, on_iteration=arm)
    message = str(info.value)
    assert "\n" not in message and message == (f"cannot write {run / CHECKPOINT}: No space left on device; last "
                                               f"good checkpoint: {run / CHECKPOINT} (iteration 6)")
    assert load_tensors(run / CHECKPOINT)[1]["iteration"] == 6
    assert load_tensors(run / PREVIOUS_CHECKPOINT)[1]["iteration"] == 3
    assert not _temporaries(run) and not (run / ".lock").exists()
    monkeypatch.undo()
    train(_data(), _cfg(), run, model_config=MC, progress=False)
    straight_tensors, run_tensors = load_tensors(straight / CHECKPOINT)[0], load_tensors(run / CHECKPOINT)[0]
    assert all(torch.equal(straight_tensors[k], run_tensors[k]) for k in straight_tensors)
    assert all(torch.equal(a, b) for a, b in zip(load_model(straight).state_dict().values(),
                                                 load_model(run).state_dict().values(), strict=True))


def _cli_setup(root: Path, iterations: int, checkpoint_every: int) -> tuple[str, ...]:
    np.save(root / "patches.npy", _patches())
    config = {"iterations": iterations, "batch_size": 32, "steps": 4, "beta": 1.0, "log_every": 1,
              "checkpoint_every": checkpoint_every, "eval_every": 10 ** 6, "eval_steps": 8, "eval_samples": 20}
    (root / "train.json").write_text(json.dumps(config))
    return ("train", "--data", str(root / "patches.npy"), "--latents", "8", "--config", str(root / "train.json"),
            "--no-progress", "--no-eval")


def test_cli_full_disk_is_one_line_and_resume_continues(tmp_path, monkeypatch, capsys):
    """`fond train` on a full disk: `fond: error: cannot write ...: No space left on device; ...`, exit 2; then
    `fond train --resume` continues from the checkpoint the failure left."""
    args = _cli_setup(tmp_path, iterations=6, checkpoint_every=2)
    out = tmp_path / "run"
    real_save = fond.run.atomic_write
    writes = []

    def full_after_first_checkpoint(path, data, **kwargs):
        writes.append(Path(path).name)
        if writes.count(CHECKPOINT) == 2:
            _failing_fsync(monkeypatch)
        return real_save(path, data, **kwargs)

    monkeypatch.setattr(fond.run, "atomic_write", full_after_first_checkpoint)
    monkeypatch.setattr("fond.checkpoint.atomic_write", full_after_first_checkpoint)
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"fond: error: cannot write {out / CHECKPOINT}: No space left on device; last good "
                       f"checkpoint: {out / CHECKPOINT} (iteration 2)"), err
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress", "--no-eval"]) == 0
    assert load_tensors(out / CHECKPOINT)[1]["iteration"] == 6


# ----------------------------------------------------------------------------------------------------------------
# read-only folders


def _read_only(monkeypatch, folder: Path):
    """Make ``folder`` behave as on a read-only file system: opening a file in it for writing, creating a
    folder in it, and ``os.access(..., W_OK)`` fail with EROFS (chmod cannot: the tests may run as root)."""
    real_open, real_access, real_mkdir = os.open, os.access, Path.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(folder)

    def guarded_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writing:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_access(path, mode, *args, **kwargs):
        return False if inside(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    def guarded_mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "access", guarded_access)
    monkeypatch.setattr(Path, "mkdir", guarded_mkdir)


def test_a_read_only_run_folder_is_refused_up_front_in_one_line(tmp_path, monkeypatch):
    """Before any training (which would be lost), with one line naming the folder: nothing in it changes."""
    run = tmp_path / "run"
    train(_data(), _cfg(iterations=3), run, model_config=MC, progress=False)
    before = _run_files(run)
    _read_only(monkeypatch, run)
    steps = []
    with pytest.raises(StorageError) as info:
        train(_data(), _cfg(iterations=6), run, model_config=MC, progress=False,
              on_iteration=lambda done, model: steps.append(done))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot write {run}") and "read-only" in message.lower()
    assert steps == [] and _run_files(run) == before


@pytest.mark.parametrize("check", ["access", "open"])
def test_read_only_refusal_does_not_rely_on_one_probe(tmp_path, monkeypatch, check):
    """Either sign of a read-only folder suffices: ``os.access`` saying so, or the lock file failing to open."""
    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kwargs)

    if check == "access":
        monkeypatch.setattr(os, "access", lambda path, mode, *args, **kwargs: False)
    else:
        monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(StorageError, match=f"^cannot write {re.escape(str(run))}.*(read-only|Read-only file system)"):
        with RunFolder(run).lock():
            pass


def test_cli_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    args = _cli_setup(tmp_path, iterations=3, checkpoint_every=1)
    out = tmp_path / "run"
    out.mkdir()
    _read_only(monkeypatch, out)
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fond: error: cannot write {out}") and "read-only" in err[-1].lower(), err
    assert "Traceback" not in "\n".join(err)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a chmod 555 folder")
def test_chmod_read_only_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        with pytest.raises(StorageError, match=f"^cannot write {run}"):
            train(_data(), _cfg(iterations=3), run, model_config=MC, progress=False)
    finally:
        run.chmod(0o755)


# ----------------------------------------------------------------------------------------------------------------
# one writer at a time


_HOLDER = """
import sys
from fond.run import RunFolder
with RunFolder(sys.argv[1]).lock():
    print("held", flush=True)
    sys.stdin.readline()
"""


def _hold_lock(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_blocks_nobody(tmp_path):
    """flock is per process: a second locker gets one line naming the holder's pid and host; after the
    holder exits (cleanly, or SIGKILLed leaving its lock file behind) the folder can be locked again."""
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunInUseError) as info:
            with RunFolder(run).lock():
                pass
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{run} is in use by process {holder.pid} "
                                                          f"({socket.gethostname()}, since ")
        assert message.endswith("; wait for it or use another --out")
        with pytest.raises(RunInUseError):
            train(_data(), _cfg(iterations=3), run, model_config=MC, progress=False)
        assert not (run / CHECKPOINT).exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert not (run / ".lock").exists()
    with RunFolder(run).lock():
        pass
    killed = _hold_lock(run)
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((run / ".lock").read_text())["pid"] == killed.pid  # stale: its process is dead
    with RunFolder(run).lock():  # the OS released the lock with the process
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    """A pipeline holding the folder (train → evaluate → report) may call ``train``, which locks it too."""
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        train(_data(), _cfg(iterations=3), folder, model_config=MC, progress=False)
        assert folder.lock_path.exists()
    assert not folder.lock_path.exists()


def _wait_for_lock(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if json.loads((run / ".lock").read_text())["pid"] == proc.pid and (run / "metrics.jsonl").exists():
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first training never took the lock"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_fond_train_into_the_same_folder_is_refused(tmp_path):
    """Two `fond train --out D` at once would interleave their checkpoints and logs: the second exits 2 with
    one line naming the first (pid, host, start), which goes on undisturbed."""
    args = _cli_setup(tmp_path, iterations=10 ** 6, checkpoint_every=10 ** 6)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fond", *args, "--out", str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(first, run)
        second = subprocess.run([sys.executable, "-m", "fond", *args, "--out", str(run)], capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        errors = [line for line in lines if "error" in line.lower()]
        assert errors == lines[-1:] and "Traceback" not in second.stderr, lines
        assert lines[-1].startswith(f"fond: error: {run} is in use by process {first.pid} "
                                    f"({socket.gethostname()}, since "), lines
        assert lines[-1].endswith("wait for it or use another --out")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.communicate(timeout=60)
    with RunFolder(run).lock():  # killed: its lock went with it
        pass
