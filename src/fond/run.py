"""A run folder: the names of its files, the one atomic writer, and the lock its writer holds.

``RunFolder(path)`` is the only place that spells a run's file names; every other module asks it::

    runs/x/
      config.json                   the model's configuration and provenance   folder.config_path
      model.safetensors             the trained model (``fond.load``)          folder.model_path
      checkpoint.safetensors        model + optimizer + position, to resume    folder.checkpoint_path
      checkpoint.prev.safetensors   the checkpoint before it                   folder.previous_checkpoint_path
      metrics.jsonl                 the training log, one JSON row per step    folder.metrics_path
      tensorboard/                  event files, if TensorBoard is installed   folder.tensorboard_dir
      report/                       report.md, eval.json, trace.npz, figures   folder.report_dir
                                    (folder.report_path, .eval_path, .trace_path, .report_file(name))
      done.json                     the result row, written last: finished     folder.done_path
      .lock                         who writes the folder now (while held)     folder.lock_path

Every file is written by :func:`atomic_write`: a temporary file in the same folder, written, flushed and
fsynced, then renamed over the old name, and the folder fsynced. A crash leaves the old file or the new one,
never half of one; a failed write (full disk, read-only folder, ...) removes its temporary file, leaves the
old file as it was and raises a one-line :class:`~fond.errors.StorageError` naming the file and the cause.

``with folder.lock():`` holds an exclusive ``flock`` on ``.lock`` (which records pid, host and start time)
while a process writes the folder; a second writer is refused with a one-line
:class:`~fond.errors.RunInUseError` naming the holder. The OS releases the lock when its process dies, so a
stale ``.lock`` left by a killed process blocks nobody. This module imports nothing of fond but its errors,
so every other module may use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fond.errors import RunInUseError, StorageError

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunFolder", "atomic_write", "write_json", "write_npz", "remove_stale_temporaries", "CONFIG", "MODEL",
           "CHECKPOINT", "PREVIOUS_CHECKPOINT", "METRICS", "TENSORBOARD", "REPORT", "REPORT_MD", "EVAL", "TRACE",
           "DONE", "LOCK"]

#: the file names of a run folder (on disk since the first release; old runs keep loading)
CONFIG = "config.json"
MODEL = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
PREVIOUS_CHECKPOINT = "checkpoint.prev.safetensors"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
REPORT = "report"
REPORT_MD = "report.md"
EVAL = "eval.json"
TRACE = "trace.npz"
DONE = "done.json"
LOCK = ".lock"

_TMP_MARK = ".tmp-"

#: what an atomic write writes: bytes, text (UTF-8), or a function writing into a binary file handle
Payload = bytes | str | Callable[[IO[bytes]], Any]


def _cause(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _fsync_directory(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_folder(folder: Path, purpose: Path) -> None:
    """Create ``folder`` (and its parents); ``StorageError`` naming ``purpose`` if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"cannot write {purpose}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise StorageError(f"cannot write {purpose}: {_cause(exc)}") from None


def atomic_write(path: str | os.PathLike[str], data: Payload, *,
                 keep_previous: str | os.PathLike[str] | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path``.

    ``data``: bytes, text (written as UTF-8) or a function ``write(handle)`` writing into a binary file (e.g.
    ``np.savez`` or ``Figure.savefig``). The bytes go to ``.NAME.tmp-PID`` in the same folder, are flushed and
    fsynced, the temporary file is renamed to ``path`` and the folder fsynced. With ``keep_previous``, the file
    ``path`` held is first renamed to ``keep_previous`` (at every instant one of the two names holds a complete
    file). Any ``OSError`` (full disk, read-only folder, no permission) removes the temporary file and raises
    ``StorageError("cannot write PATH: CAUSE")``; ``path`` then still holds what it held before.
    """
    path = Path(path)
    _make_folder(path.parent, path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path}: {_cause(exc)}") from None
        raise
    _fsync_directory(path.parent)
    return path


def write_json(path: str | os.PathLike[str], data: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """``data`` as indented JSON (and a final newline) at ``path``, through :func:`atomic_write`."""
    return atomic_write(path, json.dumps(data, indent=2, default=default) + "\n")


def write_npz(path: str | os.PathLike[str], arrays: dict[str, Any]) -> Path:
    """``arrays`` (name → numpy array) as an uncompressed ``.npz`` at ``path`` (no pickle: object arrays are
    refused on reading), through :func:`atomic_write`."""
    import numpy as np

    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (alive, or not ours to signal)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``directory`` when its process was killed
    mid-write (those of processes still alive are kept). Returns the paths removed."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(f".*{_TMP_MARK}*"):
        pid_text = path.name.rpartition(_TMP_MARK)[2]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _writer_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _member(*parts: str, doc: str) -> property:
    """A read-only ``RunFolder`` attribute: the path of ``parts`` inside the folder."""
    return property(lambda folder: folder.path.joinpath(*parts), doc=doc)


#: run folders whose lock this process holds ((pid, resolved path) → nesting depth): ``lock()`` is re-entrant
#: (the pid keeps a forked child from taking its parent's entry for its own lock)
_HELD: dict[tuple[int, str], int] = {}


class RunFolder:
    """The folder of one run: the path of each of its files, its lock, and writers for its result files.

    ``RunFolder("runs/x").checkpoint_path`` is ``runs/x/checkpoint.safetensors``, and so on (see the module
    docstring for the layout). Usable wherever a path is (``os.fspath(folder)`` is its path).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---- the files (each a ``Path``) ------------------------------------------------------------------------

    config_path = _member(CONFIG, doc="``config.json``: format, ``ModelConfig`` and provenance (train config, "
                                      "data) of the model.")
    model_path = _member(MODEL, doc="``model.safetensors``: the model's tensors (with ``config.json``, what "
                                    "``fond.load`` reads).")
    checkpoint_path = _member(CHECKPOINT, doc="``checkpoint.safetensors``: model, optimizer state and position "
                                              "of the newest checkpoint.")
    previous_checkpoint_path = _member(PREVIOUS_CHECKPOINT, doc="``checkpoint.prev.safetensors``: the checkpoint "
                                                                "before the newest, kept until the next is written.")
    metrics_path = _member(METRICS, doc="``metrics.jsonl``: the training log, one JSON object per logged "
                                        "iteration.")
    tensorboard_dir = _member(TENSORBOARD, doc="``tensorboard/``: TensorBoard event files (if it is installed).")
    report_dir = _member(REPORT, doc="``report/``: the evaluation's report, numbers, curves and figures.")
    report_path = _member(REPORT, REPORT_MD, doc="``report/report.md``: the report.")
    eval_path = _member(REPORT, EVAL, doc="``report/eval.json``: the evaluation summary (R², zeros, "
                                          "rate–distortion, ...).")
    trace_path = _member(REPORT, TRACE, doc="``report/trace.npz``: the evaluation's per-step curves, one array of "
                                            "length T_test per key.")
    done_path = _member(DONE, doc="``done.json``: the run's result row, written last (its presence marks the run "
                                  "finished).")
    lock_path = _member(LOCK, doc="``.lock``: pid, host and start time of the process writing the folder (see "
                                  "``lock``).")

    def report_file(self, name: str) -> Path:
        """``report/NAME``, e.g. a figure (``report_file("dictionary.png")``)."""
        return self.report_dir / name

    # ---- state and result files --------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """The checkpoints present, newest first (``checkpoint.safetensors``, ``checkpoint.prev.safetensors``)."""
        return [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]

    def is_finished(self) -> bool:
        """Whether the run was trained, evaluated and reported (``done.json`` exists)."""
        return self.done_path.is_file()

    def write_done(self, row: dict[str, Any]) -> Path:
        """Write the result row to ``done.json`` (last: it marks the run finished)."""
        return write_json(self.done_path, row)

    def write_trace(self, trace: dict[str, Any]) -> Path:
        """Write the evaluation's per-step curves (name → array of length T_test) to ``report/trace.npz`` as
        float64 arrays (no pickle)."""
        import numpy as np

        return write_npz(self.trace_path, {key: np.asarray(value, dtype=float) for key, value in trace.items()})

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files that killed writers left in the folder; see the module function."""
        return remove_stale_temporaries(self.path)

    # ---- writing it: up-front check and lock ----------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the folder if needed; a one-line ``StorageError`` if it cannot be created or written to
        (read-only file system, no permission)."""
        _make_folder(self.path, self.path)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StorageError(f"cannot write {self.path}: the folder is read-only (no write permission)")

    @contextlib.contextmanager
    def lock(self) -> Iterator[RunFolder]:
        """Hold the folder's exclusive lock for the block: refused up front with a one-line ``StorageError``
        if the folder cannot be written, and with ``RunInUseError`` naming the holder (pid, host, start time)
        while another process holds it. Re-entrant within a process. The lock dies with its process."""
        key = (os.getpid(), os.fspath(self.path.resolve()))
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield self
            finally:
                _HELD[key] -= 1
            return
        self.check_writable()
        fd = self._acquire()
        _HELD[key] = 1
        try:
            yield self
        finally:
            del _HELD[key]
            self._release(fd)

    def _acquire(self) -> int:
        """Open ``.lock``, take its flock and record this process in it; the open descriptor."""
        for _ in range(10):  # another process may remove the file between our open and our flock: reopen
            fd = self._open_lock_file()
            if fcntl is None:
                return fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StorageError(f"cannot lock {self.lock_path}: {_cause(exc)}") from None
                raise RunInUseError(f"{self.path} is in use by {holder}; wait for it or use another --out") from None
            if self._is_current(fd):
                self._record_holder(fd)
                return fd
            os.close(fd)
        raise RunInUseError(f"{self.path} is in use (its lock file keeps changing); wait or use another --out")

    def _open_lock_file(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot write {self.lock_path}: {_cause(exc)}") from None

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file named ``.lock`` (a releasing holder removes it)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
        except OSError:
            return False

    def _record_holder(self, fd: int) -> None:
        since = time.time()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": since,
                  "since_text": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write {self.lock_path}: {_cause(exc)}") from None

    def _release(self, fd: int) -> None:
        """Remove ``.lock`` while still holding it (so no one locks a file about to vanish), then unlock."""
        with contextlib.suppress(OSError):
            if self._is_current(fd):
                self.lock_path.unlink()
        os.close(fd)  # closing the last descriptor releases the flock


def _read_holder(fd: int) -> str:
    """"process 1234 (host, since 12:03:04)" from a lock file's record, or "another process"."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, since = int(record["pid"]), str(record["host"]), float(record["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
    started = time.localtime(since)
    same_day = time.strftime("%Y-%m-%d", started) == time.strftime("%Y-%m-%d")
    return f"process {pid} ({host}, since {time.strftime('%H:%M:%S' if same_day else '%Y-%m-%d %H:%M:%S', started)})"
