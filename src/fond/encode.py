"""Codes out: a model's spike counts, mean codes and reconstructions of a data set, for analysis elsewhere.

``encode(model, x, out, steps)`` rolls ``model.infer`` over x in chunks (chunk i seeded ``seed + i``, as
``fond.evaluate.evaluate`` does) and writes each array straight into a ``.npy`` file on disk, which are then
stored in one ``.npz`` (the zip NumPy reads with ``np.load``; no pickle): memory stays bounded by one chunk
whatever the data's size, and ``out`` appears only once complete.

    >>> import numpy as np, torch, fond
    >>> from fond.encode import encode
    >>> model = fond.IPVAE(16, 8, seed=0)
    >>> shapes = encode(model, torch.randn(5, 16), "/tmp/fond-doctest-codes.npz", steps=3, record=[1, 3])
    >>> shapes["spikes"], shapes["rates_history"]
    ((5, 8), (2, 5, 8))
    >>> np.load("/tmp/fond-doctest-codes.npz")["steps"].tolist()
    [1, 3]
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fond.errors import DataError, FondError

__all__ = ["WHAT", "encode"]

#: what ``encode`` can write: the evaluation sample (integer counts for iP-VAE), the mean code, and the
#: decoder's reconstruction of the sample
WHAT = ("spikes", "rates", "reconstruction")


def encode(model, x, out: str | Path, steps: int = 1000, *, what: Sequence[str] = ("spikes", "rates"),
           record: Iterable[int] | None = None, seed: int = 0, chunk_size: int = 1000,
           progress: bool = False) -> dict[str, tuple[int, ...]]:
    """Write the codes of x (N, D) after ``steps`` inference steps to ``out`` (.npz); return {array: shape}.

    Arrays, for each name in ``what``: ``spikes`` (N, K), ``rates`` (N, K), ``reconstruction`` (N, D), all at
    t = ``steps``. With ``record`` (1-based steps): ``steps`` (S,) int64 and ``spikes_history`` /
    ``rates_history`` (S, N, K) at those steps. float32 (the model's dtype), rows in x's order.
    """
    from fond.models.common import check_steps, numeric_tensor
    from fond.rollout import check_record

    x = numeric_tensor(x, "data to encode")
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"data to encode must have shape (N ≥ 1, D), got {tuple(x.shape)}")
    check_steps(steps)
    names = _check_what(what)
    recorded = check_record(record, steps)
    out = _check_out(out)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataError(f"chunk_size must be an integer ≥ 1, got {chunk_size!r}")
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as folder:
            files = _write_chunks(model, x, steps, names, recorded, seed, chunk_size, progress, Path(folder))
            return _zip(files, out)
    except OSError as err:
        raise FondError(f"cannot write {out}: {err.strerror or err}") from None


def _check_what(what: Sequence[str]) -> tuple[str, ...]:
    names = (what,) if isinstance(what, str) else tuple(what)
    unknown = [name for name in names if name not in WHAT]
    if not names or unknown:
        raise DataError(f"what must name some of {', '.join(WHAT)}; got {unknown[0] if unknown else 'nothing'!r}")
    return tuple(dict.fromkeys(names))


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"codes are written as a .npz file; got {out}")
    if not out.parent.is_dir():
        raise DataError(f"folder {out.parent} does not exist")
    return out


def _chunk_arrays(result, names: tuple[str, ...], recorded: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The arrays of one chunk's ``InferenceResult``, batch on axis 0 (axis 1 for histories)."""
    finals = {"spikes": result.spikes, "rates": result.rates, "reconstruction": result.reconstruction}
    arrays = {name: finals[name].detach().cpu().numpy() for name in names}
    if recorded:
        for name in ("spikes", "rates"):
            if name in names:
                arrays[f"{name}_history"] = result.history[name].detach().cpu().numpy()
    return arrays


def _write_chunks(model, x, steps: int, names: tuple[str, ...], recorded: tuple[int, ...], seed: int,
                  chunk_size: int, progress: bool, folder: Path) -> dict[str, Path]:
    """Roll the chunks and write every array into ``folder``/NAME.npy (memory maps); return their paths."""
    from tqdm.auto import tqdm

    n = x.shape[0]
    maps: dict[str, np.memmap] = {}
    with tqdm(total=n, desc="encode", unit="input", disable=not progress, dynamic_ncols=True) as bar:
        for i, begin in enumerate(range(0, n, chunk_size)):
            chunk = x[begin:begin + chunk_size]
            result = model.infer(chunk, steps, seed=seed + i, trace=False, record=recorded or None)
            for name, values in _chunk_arrays(result, names, recorded).items():
                if name not in maps:
                    shape = (*values.shape[:-2], n, values.shape[-1]) if name.endswith("_history") else (
                        n, *values.shape[1:])
                    maps[name] = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", values.dtype, shape)
                rows = slice(begin, begin + chunk.shape[0])
                maps[name][(slice(None), rows) if name.endswith("_history") else rows] = values
            bar.update(chunk.shape[0])
    if recorded:
        np.save(folder / "steps.npy", np.asarray(recorded, dtype=np.int64))
    for array in maps.values():
        array.flush()
    return {path.stem: path for path in sorted(folder.glob("*.npy"))}


def _zip(files: dict[str, Path], out: Path) -> dict[str, tuple[int, ...]]:
    """Store ``files`` (name → .npy) in ``out`` (a .npz, uncompressed), atomically; return their shapes."""
    partial = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, path in files.items():
            archive.write(path, arcname=f"{name}.npy")
    os.replace(partial, out)
    return {name: tuple(np.load(path, mmap_mode="r").shape) for name, path in files.items()}
