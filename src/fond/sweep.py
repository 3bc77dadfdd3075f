"""Sweeps: a grid over models × β × T_train × seeds, trained and evaluated one run at a time, resumable.

A sweep is described by a :class:`SweepConfig` (a JSON or YAML file, or CLI flags). Each grid point is a run
directory ``OUT/<model>_b<β>_t<T>_s<seed>`` holding the usual checkpoint, log and report; a run whose
``done.json`` exists is skipped, and an interrupted one resumes from its checkpoint (``fond.train``).
The results are gathered into ``OUT/sweep.csv`` and ``OUT/sweep.json`` (one row per run).
:func:`run_sweep` runs the grid here, one run at a time; ``fond.sweep_ray.run_sweep_ray`` submits each
unfinished run as a Ray task and gathers the same table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fond.config import PRESETS, ModelConfig, TrainConfig, config_from_dict, load_json, preset
from fond.errors import ConfigError, read_bytes
from fond.experiment import RESULT_COLUMNS
from fond.registry import model_spec
from fond.run import DONE, RunFolder, atomic_write, write_json
from fond.validate import require as _require

__all__ = ["SweepConfig", "RunSpec", "run_point", "run_sweep", "read_results", "load_sweep_file",
           "RESULT_COLUMNS", "SWEEP_TABLE", "SWEEP_CSV", "SWEEP_CONFIG"]

#: the files of a sweep folder (beside one run folder per grid point): its table as JSON and CSV, its config
SWEEP_TABLE = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_CONFIG = "sweep-config.json"

def _int_list(value, key: str, minimum: int) -> None:
    _require(isinstance(value, list) and len(value) > 0, key, f"must be a non-empty list, got {value!r}")
    for v in value:
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= minimum, key,
                 f"entries must be integers ≥ {minimum}, got {v!r}")


@dataclass(frozen=True)
class SweepConfig:
    """A grid of runs. ``betas`` / ``t_train`` None: the preset's value for each model.

    models: model names (``fond.registry.model_names()``). seeds: training seeds. iterations / batch_size: override
    the preset's. latents: K (None: the preset's, ``fond.config.take_latents``). eval_steps: T_test. eval_samples:
    evaluate on the first N held-out inputs (None: all). model_options: per model name, extra ``ModelConfig``
    fields (e.g. ``{"lca": {"method_options": {"sparsity": 0.5}}}``). time_limit_minutes: per run (None: the preset's).
    """

    models: list[str]
    data: str = "natural16"
    preset: str = "quick"
    betas: list[float] | None = None
    t_train: list[int] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    iterations: int | None = None
    batch_size: int | None = None
    latents: int | None = None
    decoder: str = "linear"
    eval_steps: int = 1000
    eval_samples: int | None = None
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    time_limit_minutes: float | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.models, list) and len(self.models) > 0, "models", "must be a non-empty list")
        for name in self.models:
            try:
                model_spec(name)
            except ConfigError as exc:
                raise ConfigError(f"config key 'models': {exc}") from None
        _require(len(set(self.models)) == len(self.models), "models", "lists a model twice")
        _require(self.preset in PRESETS, "preset", f"must be one of {PRESETS}, got {self.preset!r}")
        _require(isinstance(self.data, str) and self.data != "", "data", "must be a data spec such as natural16")
        if self.betas is not None:
            _require(isinstance(self.betas, list) and len(self.betas) > 0, "betas", "must be a non-empty list")
            for b in self.betas:
                _require(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) and b >= 0,
                         "betas", f"entries must be finite numbers ≥ 0, got {b!r}")
        if self.t_train is not None:
            _int_list(self.t_train, "t_train", 1)
        _int_list(self.seeds, "seeds", 0)
        for key in ("iterations", "batch_size", "eval_samples"):
            value = getattr(self, key)
            _require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1), key,
                     f"must be an integer ≥ 1 or null, got {value!r}")
        for key in ("latents", "eval_steps"):
            value = getattr(self, key)
            _require((value is None and key == "latents") or (isinstance(value, int) and not isinstance(value, bool)
                                                              and value >= 1), key,
                     f"must be an integer ≥ 1{' or null' if key == 'latents' else ''}, got {value!r}")
        _require(isinstance(self.model_options, dict), "model_options", "must be an object {model: {...}}")
        for name, options in self.model_options.items():
            _require(name in self.models, "model_options", f"names {name!r}, which is not in models")
            _require(isinstance(options, dict), f"model_options.{name}", "must be an object")
        _require(self.time_limit_minutes is None or (isinstance(self.time_limit_minutes, int | float)
                                                     and self.time_limit_minutes > 0),
                 "time_limit_minutes", "must be a positive number or null")

    @classmethod
    def from_json(cls, path: str | Path) -> SweepConfig:
        return config_from_dict(cls, load_json(path), source=str(path))

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        """A sweep from a JSON file or, for ``.yaml`` / ``.yml``, a YAML file with the same keys."""
        return config_from_dict(cls, load_sweep_file(path), source=str(path))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def runs(self) -> list[RunSpec]:
        """Every grid point, in order model × β × T_train × seed."""
        specs = []
        for model in self.models:
            base = preset(self.preset, model, self.data)
            for beta in self.betas or [base.beta]:
                for steps in self.t_train or [base.steps]:
                    for seed in self.seeds:
                        specs.append(RunSpec(model=model, beta=float(beta), t_train=int(steps), seed=int(seed),
                                             sweep=self))
        return specs


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a model with its β, T_train and seed."""

    model: str
    beta: float
    t_train: int
    seed: int
    sweep: SweepConfig

    @property
    def name(self) -> str:
        return f"{self.model}_b{self.beta:g}_t{self.t_train}_s{self.seed}"

    def train_config(self) -> TrainConfig:
        cfg = preset(self.sweep.preset, self.model, self.sweep.data)
        updates: dict[str, Any] = {"beta": self.beta, "steps": self.t_train, "seed": self.seed}
        for key in ("iterations", "batch_size", "time_limit_minutes"):
            if getattr(self.sweep, key) is not None:
                updates[key] = getattr(self.sweep, key)
        cfg = replace(cfg, **updates)
        if self.sweep.iterations is not None:  # keep checkpoints and validation proportionate
            cfg = replace(cfg, checkpoint_every=min(cfg.checkpoint_every, max(1, cfg.iterations // 5)),
                          eval_every=min(cfg.eval_every, max(1, cfg.iterations // 3)))
        return cfg

    def model_config(self, n_inputs: int) -> ModelConfig:
        from fond.config import preset_model_options, take_latents

        options = preset_model_options(self.sweep.preset, self.model, self.sweep.data)
        n_latents = take_latents(options, self.sweep.latents)
        extra = dict(self.sweep.model_options.get(self.model, {}))
        family_options = {**options.pop("family_options", {}), **extra.pop("family_options", {})}
        fields = {"decoder": self.sweep.decoder, **options, **extra}
        return config_from_dict(ModelConfig, {"n_inputs": n_inputs, "n_latents": n_latents,
                                              "model": self.model, "family_options": family_options, **fields},
                                source=f"sweep run {self.name}")


YAML_SUFFIXES = (".yaml", ".yml")


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """The object in a sweep file: YAML (``.yaml`` / ``.yml``, safe loading only) or JSON (anything else).

    Errors are one line naming the file (missing, not text, not parseable, not a mapping);
    the keys and values are checked by :class:`SweepConfig` (via ``config_from_dict``).
    """
    path = Path(path)
    if path.suffix.lower() not in YAML_SUFFIXES:
        return load_json(path)
    import yaml

    raw = read_bytes(path, ConfigError)
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or exc}{where})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sweep keys (models, betas, ...), "
                          f"got {type(data).__name__}")
    return data


def run_point(spec: RunSpec, directory: str | Path, *, data=None, progress: bool = False,
              device="cpu") -> dict[str, Any]:
    """Train (or resume), evaluate and report one grid point in ``directory`` through
    :func:`fond.experiment.run_experiment`; return its result row (``RESULT_COLUMNS``, also in ``done.json``).

    ``data``: the loaded ``PatchData`` (loaded from the sweep's spec if None). ``device``: as
    ``run_experiment``'s.
    """
    from fond.data import load_data
    from fond.experiment import run_experiment

    cfg = spec.train_config()
    if data is None:
        data = load_data(spec.sweep.data, n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed)
    result = run_experiment(data, cfg, spec.model_config(data.n_inputs), directory, data_spec=spec.sweep.data,
                            eval_steps=spec.sweep.eval_steps, eval_samples=spec.sweep.eval_samples,
                            progress=progress, device=device)
    return result.row


def read_results(out_dir: str | Path, sweep: SweepConfig | None = None) -> list[dict[str, Any]]:
    """The rows of the finished runs under ``out_dir`` (those of ``sweep`` only, if given), in grid order."""
    out_dir = Path(out_dir)
    names = [spec.name for spec in sweep.runs()] if sweep is not None else sorted(
        p.parent.name for p in out_dir.glob(f"*/{DONE}"))
    rows = []
    for name in names:
        folder = RunFolder(out_dir / name)
        if folder.is_finished():
            rows.append(load_json(folder.done_path))
    return rows


def _write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_json(out_dir / SWEEP_TABLE, rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / SWEEP_CSV, buffer.getvalue())


def prepare_sweep_dir(sweep: SweepConfig, out_dir: str | Path) -> Path:
    """Create ``out_dir`` and record the sweep's config there (``sweep-config.json``), or check it is the same.

    A different sweep config in the same folder is refused, so results of two grids never mix silently.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / SWEEP_CONFIG
    if config_path.exists():
        previous = SweepConfig.from_json(config_path)
        if previous != sweep:
            raise ConfigError(f"{out_dir} holds a different sweep (see {config_path}); use another --out")
    else:
        atomic_write(config_path, sweep.to_json())
    return out_dir


def gather(sweep: SweepConfig, out_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``sweep.csv`` / ``sweep.json`` from the finished runs of ``sweep`` under ``out_dir``; return the rows."""
    rows = read_results(out_dir, sweep)
    _write_tables(Path(out_dir), rows)
    return rows


def is_finished(out_dir: str | Path, spec: RunSpec) -> bool:
    return RunFolder(Path(out_dir) / spec.name).is_finished()


def describe_row(row: dict[str, Any]) -> str:
    return (f"R² {row['r2']:.3f}, zeros {row['zeros']:.3f}, d {row['rate_distortion']:.3f} "
            f"({row['minutes']} min)")


def run_sweep(sweep: SweepConfig, out_dir: str | Path, *, progress: bool = False,
              log: Callable[[str], None] | None = None, device="cpu") -> list[dict[str, Any]]:
    """Run every grid point of ``sweep`` not yet finished under ``out_dir``; write sweep.csv / sweep.json.

    Runs go one at a time, in this process (``fond.sweep_ray.run_sweep_ray``: as Ray tasks). The config is
    written first to ``sweep-config.json``; a different sweep config in the same folder is refused, so
    results of two grids never mix silently. Returns every finished row (including ones from earlier
    invocations). ``device``: where each run trains and is evaluated (``fond.device.resolve_device``).
    """
    from fond.data import load_data

    log = log or (lambda message: None)
    out_dir = prepare_sweep_dir(sweep, out_dir)
    data_cache: dict[tuple[int, int, int], Any] = {}
    specs = sweep.runs()
    for i, spec in enumerate(specs, 1):
        directory = out_dir / spec.name
        if is_finished(out_dir, spec):
            log(f"[{i}/{len(specs)}] {spec.name}: done, skipped")
            continue
        cfg = spec.train_config()
        key = (cfg.n_train, cfg.n_val, cfg.seed)
        if key not in data_cache:
            data_cache[key] = load_data(sweep.data, n_train=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed)
        log(f"[{i}/{len(specs)}] {spec.name}: training {cfg.iterations} iterations")
        row = run_point(spec, directory, data=data_cache[key], progress=progress, device=device)
        log(f"[{i}/{len(specs)}] {spec.name}: {describe_row(row)}")
        gather(sweep, out_dir)
    return gather(sweep, out_dir)
