"""One inference loop for every method: the rollout that builds the trace, the history and the result.

Each inference method — FOND's iterative models (``fond.dynamics.FondSteps``), amortized VAEs, the hybrid
refinements, predictive and sparse coding — exposes its step as an ``InferenceSteps`` object:

    start(frame, generator, trace=)           -> Step   the state at t = 0 (and what the first step needs)
    step(previous, frame, generator)          -> Step   one step: the new state, its mean code and the
                                                        decoder input of its sample
    finish(last)                              -> Step   the read-out (copies out of reused buffers)
    decode(code), prior_term(new, previous), saturated(step), log_sigma, state_names

and ``run_inference`` runs ``steps`` of them: it picks the frame of each step (an online input (steps, B, D)
is handled here, once, for every method), keeps the ``record=`` history (``Recorder``), measures the
per-step trace (``TraceRecorder``, one meaning per key: see ``fond.result.TRACE_KEYS``) and returns the
``InferenceResult``. Nothing here knows a family, a decoder type or a model class.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError
from fond.metrics import LOG_2PI, gaussian_nll, zeros_fraction
from fond.result import DEFAULT_TRACE_KEYS, TRACE_KEYS, TRACE_ROW_KEYS, InferenceResult, Trace

__all__ = ["Step", "InferenceSteps", "run_inference", "Convergence", "Recorder", "TraceRecorder", "check_record",
           "state_step_norm", "rows_of", "DEFAULT_WINDOW", "DEFAULT_TRACE"]

State = tuple[Tensor, ...]

#: anytime inference's default window (steps): long enough to average a spiking code's step-to-step noise
DEFAULT_WINDOW = 50
#: ``infer``'s default ``trace``: ``fond.result.DEFAULT_TRACE_KEYS`` (every key but the per-step ``r2_rates``)
DEFAULT_TRACE = "default"


@dataclass(frozen=True, slots=True)
class Step:
    """What the loop reads after one step of a method (or at t = 0).

    state: the method's own state tensors (B, K) each (u; μ, log σ; the code a or LCA's potential), in the
    order of ``InferenceSteps.state_names``. rates: the mean code (B, K) a downstream reader sees. decoded:
    the decoder input f(z) (B, K) of the step's sample (the code itself for point estimates). ``rates`` and
    ``decoded`` may be None at t = 0 where a method does not need them. carry: whatever else the method's
    next step needs (the sample, the noise, a solver's iterator); the loop never reads it.
    """

    state: State
    rates: Tensor | None = None
    decoded: Tensor | None = None
    carry: Any = None


class InferenceSteps(ABC):
    """An inference method as the rollout loop drives it (one object per ``infer`` call).

    ``state_names``: the keys of ``InferenceResult.state``. ``log_sigma``: the per-pixel log σ_x (D,) of the
    trace's Gaussian NLL. A ``step`` may return its previous ``state`` object itself: that says the state did
    not move (an amortized posterior between input changes), and the loop then reuses that state's trace
    terms (kl, r2_rates, rate_max, saturated) and reports ``du_norm`` = 0.
    """

    state_names: tuple[str, ...] = ()
    log_sigma: Tensor

    def __init__(self) -> None:
        self._frame: Tensor | None = None
        self._constants: Any = None

    def prepare(self, frame: Tensor) -> Any:
        """The per-frame constants of ``frame`` (B, D) (e.g. decoder operators, an encoding); default: none."""
        return None

    def constants(self, frame: Tensor) -> Any:
        """``prepare(frame)``, recomputed only when ``frame`` is another tensor than last time's."""
        if frame is not self._frame:
            self._frame, self._constants = frame, self.prepare(frame)
        return self._constants

    @abstractmethod
    def start(self, frame: Tensor, generator: torch.Generator | None, *, trace: bool) -> Step:
        """The state at t = 0 for the first frame (B, D); ``trace``: whether the loop will read each step's state
        (or its trace terms: see ``terms_suffice``)."""

    def expect_steps(self, per_frame: int) -> None:  # noqa: B027  (an optional hook)
        """Called by the loop before ``start``: how many steps each frame will drive (the rollout's for a fixed input,
        1 for an online one), for per-frame work that pays back only over many steps. Default: nothing."""

    def terms_suffice(self) -> None:  # noqa: B027  (an optional hook: the default keeps every state)
        """Called by the loop after ``start`` when it reads each step's state only through ``trace_rows`` (a
        plain rollout: no anytime snapshots); a method whose ``trace_rows`` need no state may then skip
        computing the state per step. Default: nothing."""

    @abstractmethod
    def step(self, previous: Step, frame: Tensor, generator: torch.Generator | None) -> Step:
        """One step from ``previous`` driven by ``frame`` (B, D)."""

    def finish(self, last: Step) -> Step:
        """The read-out after the last step (default: the last step as it is)."""
        return last

    @abstractmethod
    def decode(self, code: Tensor) -> Tensor:
        """The decoder's mean g(code): (B, K) → (B, D)."""

    @abstractmethod
    def prior_term(self, new: Step, previous: Step) -> Tensor:
        """The prior term of the free energy at the new step, per input (B,), nats (the trace's ``kl``)."""

    def saturated(self, step: Step) -> Tensor:
        """(B,) bool: inputs whose state sits at the method's clamp bound (default: none)."""
        return torch.zeros(step.state[0].shape[0], dtype=torch.bool, device=step.state[0].device)

    def trace_rows(self, frame: Tensor, new: Step, previous: Step, total: Tensor, constant: float, *, fit: bool,
                   stats: bool) -> Tensor | None:
        """The per-input trace values of step ``new`` in one pass, where the method has one cheaper than the
        recorder's own (a decode and the state's terms): (B, 7) float64, the columns
        ``fond.result.TRACE_ROW_KEYS`` (r2, zeros, du_norm, nll, kl, rate_max, saturated) with the
        recorder's meanings — with ``fit`` r2 and nll (given the frame's ``total`` Σ_d (x − x̄)² (B,) float64 and
        the NLL's ``constant`` Σ_d log σ_d + D/2 log 2π), with ``stats`` the other five; or None (the default)."""
        return None

    def squared_error(self, frame: Tensor, code: Tensor) -> Tensor | None:
        """‖x − g(code)‖² per input (B,) float64 against ``frame`` (B, D), where the method has it cheaper than a
        decode (the trace's ``r2_rates``); or None (the default)."""
        return None

    def select(self, step: Step, rows: Tensor, frame: Tensor) -> Step | None:
        """``step`` narrowed to ``rows`` ((B',) int64 indices into its batch), to go on with ``frame`` (B', D),
        the frame's rows; or None where the method cannot narrow its batch (the default). Anytime inference
        (``Convergence``) uses it to drop converged inputs; without it they stay in the batch, held."""
        return None


def state_step_norm(new_state: State, state: State) -> Tensor:
    """‖new_state − state‖₂ over all state tensors together, per input: (B,)."""
    return torch.cat([a - b for a, b in zip(new_state, state, strict=True)], dim=-1).norm(dim=-1)


def run_inference(method: InferenceSteps, x: Tensor, steps: int, *, generator: torch.Generator | None = None,
                  trace: bool | str | Iterable[str] = "default", record=None, tol: float | None = None,
                  window: int = DEFAULT_WINDOW) -> InferenceResult:
    """Run ``steps`` steps of ``method`` on x and return the ``InferenceResult``.

    x: (B, D) a fixed input, or (steps, B, D) an online input whose frame x[t − 1] drives step t (the trace's
    R² and NLL are then measured against that frame). ``trace``: record ``InferenceResult.trace`` (per-step batch
    means): "default" every key but ``r2_rates``, True every key, False none, or the keys to record (``trace_keys``:
    each costs only what it needs). ``record``: 1-based steps whose mean code and sample to keep in
    ``InferenceResult.history``. ``tol``: anytime inference (``Convergence``: each input is frozen once its mean
    code has settled within ``tol`` over two windows of ``window`` steps, and the rollout stops when all are; fixed
    input only). The trace and history then still cover all ``steps``: past the stop they hold the frozen values
    (what more steps would give: ``du_norm`` 0, the prior term of an unmoved state).
    Call under ``torch.no_grad()``; inputs are expected checked (``fond.models.common``).
    """
    keys = trace_keys(trace)  # a bad trace argument fails before any step
    if tol is not None:
        watch = Convergence(tol, window, steps, online=x.ndim == 3)
        return _run_anytime(method, x, steps, watch, generator=generator, keys=keys, record=record)
    online = x.ndim == 3
    recorder = Recorder(record, steps)
    tracer = TraceRecorder(method, keys) if keys else None
    frame = x[0] if online else x
    method.expect_steps(1 if online else steps)
    current = method.start(frame, generator, trace=tracer is not None and tracer.reads_state)
    method.terms_suffice()
    for t in range(steps):
        if online and t > 0:
            frame = x[t]
        new = method.step(current, frame, generator)
        recorder(t + 1, new.rates, new.decoded)
        if tracer is not None:
            tracer(frame, new, current)
        current = new
    return result_of(method, method.finish(current), steps, tracer, recorder)


def _run_anytime(method: InferenceSteps, x: Tensor, steps: int, watch: Convergence, *,
                 generator: torch.Generator | None, keys: tuple[str, ...], record) -> InferenceResult:
    """``run_inference`` with ``tol``: the batch narrows to the unconverged inputs where the method can
    (``InferenceSteps.select``); the trace, the history and the result still cover every input."""
    recorder = Recorder(record, steps)
    tracer = TraceRecorder(method, keys) if keys else None
    frame, narrowable, done = x, True, steps
    method.expect_steps(steps)
    current = method.start(frame, generator, trace=True)
    for t in range(1, steps + 1):
        new = watch.hold(method.step(current, frame, generator))
        froze = watch.observe(t, new)
        if recorder.wants(t):
            whole = watch.whole(new)
            recorder(t, whole.rates, whole.decoded)
        if tracer is not None:
            tracer(frame, new, current, index=watch.index)
        current = new
        if watch.all_frozen:
            done = t
            break
        if froze and narrowable and t < steps:  # (after the last step the read-out comes from this batch)
            keep = (~watch.frozen).nonzero().squeeze(1)
            kept = frame[keep]  # (one tensor: the method may key its per-frame constants on it)
            narrowed = method.select(current, keep, kept)
            narrowable = narrowed is not None
            if narrowable:
                if tracer is not None:
                    leaving = rows_of(current, watch.frozen)
                    tracer.settle(watch.index_of(watch.frozen), method.prior_term(leaving, leaving))
                watch.drop_frozen(current)
                current, frame = narrowed, kept
    final = watch.whole(watch.hold(method.finish(current)))
    recorder.hold(done, final)
    if tracer is not None:
        tracer.hold(steps, final)
    return result_of(method, final, steps, tracer, recorder, watch.steps_used)


def _tensors(step: Step) -> tuple[Tensor, ...]:
    """``step``'s per-input tensors: its state tensors, then its mean code and its sample."""
    return (*step.state, step.rates, step.decoded)


def _step_of(tensors, carry: Any = None) -> Step:
    """The ``Step`` whose ``_tensors`` are ``tensors``."""
    return Step(tuple(tensors[:-2]), tensors[-2], tensors[-1], carry=carry)


def rows_of(step: Step, rows: Tensor, carry: Any = None) -> Step:
    """``step``'s state, mean code and sample at ``rows`` (indices or a (B,) mask), with ``carry`` (what an
    ``InferenceSteps.select`` returns once it has narrowed its own carry)."""
    return _step_of([t[rows] for t in _tensors(step)], carry)


def result_of(method: InferenceSteps, final: Step, steps: int, tracer: TraceRecorder | None,
              recorder: Recorder, steps_used: Tensor | None = None) -> InferenceResult:
    """The ``InferenceResult`` of a rollout whose read-out is ``final`` after ``steps`` steps."""
    reconstruction = method.decode(final.decoded)
    from_rates = reconstruction if final.rates is final.decoded else method.decode(final.rates)
    return InferenceResult(
        rates=final.rates,
        spikes=final.decoded,
        state=dict(zip(method.state_names, final.state, strict=True)),
        reconstruction=reconstruction,
        reconstruction_from_rates=from_rates,
        steps=steps,
        trace=Trace() if tracer is None else tracer.arrays(),
        history=recorder.history(),
        steps_used=steps_used,
    )


class Convergence:
    """Anytime inference: freezes each input of a batch once its mean code has settled.

    The criterion, checked at the end of every window of ``window`` steps from the second on (t = 2w, 3w, …):
    input b has converged at step t when the mean of its mean code over steps t − w + 1..t, m, and over the
    window before, m', satisfy ‖m − m'‖₂ ≤ ``tol`` · max(‖m‖₂, ‖m'‖₂) (norms over the K neurons; a silent code
    that stays silent has converged). From then on its state, mean code and sample are those of step t;
    ``steps_used`` (B,) int64 holds t for it, ``steps`` for an input that never converged.
    Where the method can narrow its batch (``InferenceSteps.select``) converged inputs leave it, so later steps
    cost less; the others go on drawing from the same generator, no longer the numbers a rollout without
    ``tol`` would give them (for a deterministic method: the same numbers). Otherwise they stay in the batch,
    held, and every other input draws exactly what it would without ``tol``. A spiking code fluctuates around
    its posterior mean: a ``tol`` below that noise (≈ its relative spread / √w) never fires and the rollout
    runs its ``steps``.

    Bookkeeping: ``index`` (B',) the original rows of the current batch (None: all, in order); ``frozen`` (B',)
    bool the converged ones still in it; ``settled`` the values of the inputs that left (full batch).
    """

    def __init__(self, tol: float, window: int, steps: int, *, online: bool = False) -> None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise DataError(f"tol must be a finite number ≥ 0, got {tol!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise DataError(f"window must be an integer ≥ 1, got {window!r}")
        if online:
            raise DataError("tol (anytime inference) needs a fixed input (B, D): an online input keeps changing")
        self.tol, self.window, self.steps = float(tol), window, steps
        self.steps_used: Tensor | None = None
        self.frozen: Tensor | None = None
        self.index: Tensor | None = None
        self.snapshot: Step | None = None  # frozen inputs' state, mean code and sample (other rows unused)
        self.settled: Step | None = None
        self._sum: Tensor | None = None
        self._previous: Tensor | None = None

    @property
    def all_frozen(self) -> bool:
        return self.frozen is not None and bool(self.frozen.all())

    def index_of(self, rows: Tensor) -> Tensor:
        """The original rows of the current batch's ``rows`` (indices or a mask)."""
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return rows if self.index is None else self.index[rows]

    def observe(self, t: int, new: Step) -> bool:
        """Take step ``t`` (1-based, already ``hold``-ed) into the window means; True if inputs froze at it."""
        if self.frozen is None:
            self.frozen = torch.zeros(new.rates.shape[0], dtype=torch.bool, device=new.rates.device)
            self.steps_used = torch.full_like(self.frozen, self.steps, dtype=torch.int64)
        self._sum = new.rates.clone() if self._sum is None else self._sum.add_(new.rates)
        if t % self.window:
            return False
        mean, self._sum = self._sum / self.window, None
        previous, self._previous = self._previous, mean
        if previous is None:
            return False
        change = (mean - previous).norm(dim=-1)
        scale = torch.maximum(mean.norm(dim=-1), previous.norm(dim=-1))
        return self._freeze((change <= self.tol * scale) & ~self.frozen, new, t)

    def hold(self, step: Step) -> Step:
        """``step`` with the frozen inputs' rows replaced by their frozen values."""
        if self.snapshot is None:
            return step
        keep = self.frozen[:, None]
        return _step_of([torch.where(keep, a, b) for a, b in zip(_tensors(self.snapshot), _tensors(step), strict=True)],
                        step.carry)

    def whole(self, step: Step) -> Step:
        """``step`` of the current batch widened to every input (those that left: their settled values)."""
        if self.settled is None:
            return step
        parts = []
        for held, now in zip(_tensors(self.settled), _tensors(step), strict=True):
            full = held.clone()
            full[self.index] = now
            parts.append(full)
        return _step_of(parts)

    def drop_frozen(self, step: Step) -> None:
        """The frozen inputs (their values: ``step``'s rows) leave the batch; the rest go on."""
        gone, keep = self.frozen, ~self.frozen
        if self.settled is None:
            batch = len(self.steps_used)
            self.settled = _step_of([t.new_zeros((batch, *t.shape[1:])) for t in _tensors(step)])
        originals = self.index_of(gone)
        for held, now in zip(_tensors(self.settled), _tensors(step), strict=True):
            held[originals] = now[gone]
        self.index = self.index_of(keep)
        self._sum = None if self._sum is None else self._sum[keep]
        self._previous = None if self._previous is None else self._previous[keep]
        self.frozen, self.snapshot = self.frozen[keep], None

    def _freeze(self, rows: Tensor, step: Step, t: int) -> bool:
        if not bool(rows.any()):
            return False
        if self.snapshot is None:
            self.snapshot = _step_of([t.clone() for t in _tensors(step)])
        else:
            for held, now in zip(_tensors(self.snapshot), _tensors(step), strict=True):
                held[rows] = now[rows]
        self.frozen |= rows
        self.steps_used[self.index_of(rows)] = t
        return True


#: the keys that need a decode of the sample per step (R², NLL)
FIT_KEYS = frozenset({"r2", "nll", "nelbo"})


def trace_keys(trace) -> tuple[str, ...]:
    """``infer``'s ``trace`` as the keys to record, in ``TRACE_KEYS`` order: "default" ``DEFAULT_TRACE_KEYS``
    (every key but ``r2_rates``), True all of them, False/None none, a key or an iterable of keys those (each
    costs only what it needs: ``r2``/``nll``/``nelbo`` the sample's residual per step, from its non-zero counts
    where the code is sparse; ``r2_rates`` a decode of the dense mean code; the others one pass over the
    code). Else ``DataError``."""
    if trace is True:
        return TRACE_KEYS
    if isinstance(trace, str) and trace == DEFAULT_TRACE:
        return DEFAULT_TRACE_KEYS
    if trace is False or trace is None:
        return ()
    asked = (trace,) if isinstance(trace, str) else trace
    try:
        asked = set(asked)
    except TypeError:
        raise DataError(f"trace must be True, False, {DEFAULT_TRACE!r} or trace keys {TRACE_KEYS}, got {trace!r}"
                        ) from None
    unknown = sorted(str(key) for key in asked - set(TRACE_KEYS))
    if unknown:
        raise DataError(f"unknown trace key {unknown[0]!r}: expected some of {TRACE_KEYS}")
    return tuple(key for key in TRACE_KEYS if key in asked)


class TraceRecorder:
    """Per-step batch means of the trace ``keys`` (their meanings: ``fond.result.TRACE_MEANINGS``).

    Each step's per-input values form one (B, M) float64 table, a column per measured key (``measured``: the keys
    but ``nelbo``, which is the mean of nll + kl, with those two); the recorder keeps the last step's table
    (``rows``), so that inputs anytime inference has taken out of the batch still count in the means with their
    settled values. Computes only what ``keys`` need (``trace_keys``), in one pass where the method offers it
    (``InferenceSteps.trace_rows``).
    """

    def __init__(self, method: InferenceSteps, keys: tuple[str, ...] = TRACE_KEYS) -> None:
        self.method, self.keys = method, keys
        wanted = set(keys) | ({"nll", "kl"} if "nelbo" in keys else set())
        #: the per-input columns, in ``TRACE_KEYS`` order
        self.measured = tuple(key for key in TRACE_KEYS if key in wanted and key != "nelbo")
        self.column = {key: i for i, key in enumerate(self.measured)}
        self.fit = bool(wanted & FIT_KEYS)
        self.rates_fit = "r2_rates" in wanted
        #: whether the recorder reads each step's state terms (nelbo needs kl; the fit keys need only the code)
        self.reads_state = bool(wanted - {"r2", "nll", "r2_rates"})
        self.means: list[Tensor] = []  # one (M,) row per step, left on the device until arrays()
        self.rows: Tensor | None = None  # (B, M) float64: each input's values at its last step
        self._state: State | None = None
        self._state_terms: dict[str, Tensor] = {}
        self._frame: Tensor | None = None
        self._frame_terms: tuple = ()
        self._maximum = torch.tensor([key == "rate_max" for key in self.measured])  # the columns averaged by max
        #: whether the method's one pass (``trace_rows``) has any measured key (r2_rates it never gives)
        self.one_pass = bool(set(self.measured) - {"r2_rates"})
        # the one pass's columns that are the measured ones, where they all are (None: every column, in order)
        self._row_columns = None if self.rates_fit or self.measured == TRACE_ROW_KEYS else torch.tensor(
            [TRACE_ROW_KEYS.index(key) for key in self.measured])

    def __call__(self, frame: Tensor, new: Step, previous: Step, index: Tensor | None = None) -> None:
        """Measure step ``new`` (reached from ``previous``) against ``frame`` (B', D); ``index``: the inputs
        (rows of the whole batch) the B' rows are, None for all in order."""
        table = self._table(frame, new, previous)
        if index is None:
            self.rows = table
        else:
            self.rows[index] = table
        self._append()

    def settle(self, index: Tensor, prior_term: Tensor) -> None:
        """Inputs ``index`` leave the batch unmoved from now on: ``du_norm`` 0, ``kl`` their ``prior_term``."""
        self.rows = self.rows.clone()
        if "du_norm" in self.column:
            self.rows[index, self.column["du_norm"]] = 0.0
        if "kl" in self.column:
            self.rows[index, self.column["kl"]] = prior_term.to(self.rows.dtype)

    def hold(self, steps: int, final: Step) -> None:
        """Extend the trace to ``steps`` with the values of a rollout that no longer moves (every input
        frozen by anytime inference): each input's last values, ``du_norm`` 0, the prior term of an unmoved state."""
        missing = steps - len(self.means)
        if missing <= 0:
            return
        self.settle(torch.arange(len(final.rates), device=final.rates.device), self.method.prior_term(final, final))
        self._append()
        self.means.extend([self.means[-1]] * (missing - 1))

    def _append(self) -> None:
        """This step's batch means (``rate_max``: the maximum), kept as one tensor: no host synchronisation
        inside the step loop (the values reach the host once, in ``arrays``)."""
        rows = self.rows
        if self._maximum.device != rows.device:
            self._maximum = self._maximum.to(rows.device)
        # a few tensor operations per step however many keys (each one costs microseconds at B ≤ 10⁴)
        self.means.append(torch.where(self._maximum, rows.amax(0), rows.mean(0)))

    def _table(self, frame: Tensor, new: Step, previous: Step) -> Tensor:
        """The (B', M) float64 table of step ``new``: from the method's one pass where it has one, else per key."""
        table = self._one_pass(frame, new, previous) if self.one_pass else None
        if table is not None and not self.rates_fit:
            return table if self._row_columns is None else table[:, self._row_columns]
        values = self._per_input(frame, new, previous) if table is None else {
            key: table[:, i] for i, key in enumerate(TRACE_ROW_KEYS)}
        if self.rates_fit and table is not None:
            values["r2_rates"] = self._rates_r2(frame, new, values["r2"] if self.fit else None)
        # float64 columns (a no-op for the one pass's, already float64): one stack per step
        return torch.stack([values[key].to(torch.float64) for key in self.measured], 1)

    def _one_pass(self, frame: Tensor, new: Step, previous: Step) -> Tensor | None:
        """``InferenceSteps.trace_rows`` for the measured keys; where its fit cannot be had (a dense code, a scalar
        log σ), its state terms and the recorder's fit from a decode."""
        total, _, constant, total64 = self._frame_constants(frame)
        fit, stats = self.fit and constant is not None, self.reads_state
        if not (fit or stats):  # (only the fit asked, with a scalar log σ: the decode's)
            return None
        table = self.method.trace_rows(frame, new, previous, total64, constant or 0.0, fit=fit, stats=stats)
        if table is None and fit and stats:
            table = self.method.trace_rows(frame, new, previous, total64, 0.0, fit=False, stats=True)
            fit = False
        if table is not None and self.fit and not fit:
            r2, nll = self._fit(frame, self.method.decode(new.decoded))
            table[:, TRACE_ROW_KEYS.index("r2")], table[:, TRACE_ROW_KEYS.index("nll")] = r2, nll
        return table

    def _per_input(self, frame: Tensor, new: Step, previous: Step) -> dict[str, Tensor]:
        """Each needed key's value per input (B',) at step ``new``, from a decode and the state."""
        out = {}
        if self.fit:
            out["r2"], out["nll"] = self._fit(frame, self.method.decode(new.decoded))
        if not self.reads_state:
            if self.rates_fit:
                out["r2_rates"] = self._rates_r2(frame, new, out.get("r2"))
            return out
        if new.state is not self._state:
            self._state, self._state_terms = new.state, self._terms_of_state(frame, new, previous, out.get("r2"))
        moved = new.state is not previous.state
        du = state_step_norm(new.state, previous.state) if moved else new.rates.new_zeros(new.rates.shape[0])
        return {**out, "zeros": zeros_fraction(new.decoded), "du_norm": du, **self._state_terms}

    def _rates_r2(self, frame: Tensor, new: Step, r2: Tensor | None) -> Tensor:
        """R² of the mean code's reconstruction (that of the sample when the two are one tensor)."""
        if r2 is not None and new.rates is new.decoded:
            return r2
        squares = self.method.squared_error(frame, new.rates)
        if squares is not None:
            return 1.0 - squares / self._frame_constants(frame)[3]
        return self._fit(frame, self.method.decode(new.rates))[0]

    def _frame_constants(self, frame: Tensor) -> tuple:
        """(Σ_d (x − x̄)² (B',), σ⁻² (D,), Σ_d log σ_d + D/2 log 2π or None for a scalar log σ, the first in
        float64) of ``frame``."""
        if frame is not self._frame:
            total = (frame - frame.mean(-1, keepdim=True)).pow(2).sum(-1).clamp_min(1e-12)
            log_sigma = self.method.log_sigma.to(frame.dtype)
            constant = float((log_sigma + 0.5 * LOG_2PI).sum()) if log_sigma.ndim else None
            self._frame = frame
            self._frame_terms = (total, torch.exp(-2.0 * log_sigma), constant, total.to(torch.float64).contiguous())
        return self._frame_terms

    def _fit(self, frame: Tensor, reconstruction: Tensor) -> tuple[Tensor, Tensor]:
        """R² and the Gaussian NLL (nats) of ``reconstruction`` against ``frame`` (B', D), per input, from one
        squared residual (``fond.metrics.r2_per_sample`` and ``gaussian_nll``, to rounding)."""
        total, precision, constant, _ = self._frame_constants(frame)
        squares = (reconstruction - frame).square_()
        if constant is None:  # a scalar log σ
            nll = gaussian_nll(frame, reconstruction, self.method.log_sigma)
        else:
            nll = 0.5 * (squares @ precision) + constant
        return 1.0 - squares.sum(-1) / total, nll

    def _terms_of_state(self, frame: Tensor, new: Step, previous: Step, r2: Tensor | None) -> dict[str, Tensor]:
        """The terms that depend on the state alone (and the frame it is judged against), per input."""
        method = self.method
        terms = {"r2_rates": self._rates_r2(frame, new, r2)} if self.rates_fit else {}
        return {**terms, "kl": method.prior_term(new, previous), "rate_max": new.rates.amax(-1),
                "saturated": method.saturated(new).to(new.rates.dtype)}

    def arrays(self) -> dict[str, np.ndarray]:
        """The trace: one array of length ``steps`` per key recorded (``nelbo``: the means of nll and kl added)."""
        table = torch.stack(self.means).cpu().numpy() if self.means else np.empty((0, len(self.measured)))
        column = {key: table[:, i] for i, key in enumerate(self.measured)}
        if "nelbo" in self.keys:
            column["nelbo"] = column["nll"] + column["kl"]
        return Trace({key: column[key].copy() for key in self.keys})


def check_record(record, steps: int) -> tuple[int, ...]:
    """``record`` (an iterable of 1-based steps, or None) as a sorted tuple of distinct steps in [1, steps]."""
    if record is None:
        return ()
    try:
        values = [int(t) for t in record]
        exact = all(float(t) == int(t) for t in record if not isinstance(t, bool))
    except (TypeError, ValueError):
        raise DataError(f"record must be an iterable of integer steps, got {record!r}") from None
    if not exact or any(isinstance(t, bool) for t in record):
        raise DataError("record must hold integer steps")
    bad = [t for t in values if not 1 <= t <= steps]
    if bad:
        raise DataError(f"record steps must lie in 1..{steps}, got {bad[0]}")
    return tuple(sorted(set(values)))


class Recorder:
    """Keeps the mean code and the sample after the steps named by ``record`` (see ``InferenceResult.history``)."""

    def __init__(self, record, steps: int) -> None:
        self.steps = check_record(record, steps)
        self._wanted = set(self.steps)
        self._rates: list[Tensor] = []
        self._spikes: list[Tensor] = []

    def wants(self, step: int) -> bool:
        """Whether 1-based ``step`` is one to record."""
        return step in self._wanted

    def __call__(self, step: int, rates: Tensor, spikes: Tensor) -> None:
        """Record after 1-based ``step`` if it was asked for."""
        if step in self._wanted:
            self._rates.append(rates.detach().clone())
            self._spikes.append(spikes.detach().clone())

    def hold(self, done: int, final: Step) -> None:
        """Record ``final`` for every asked-for step after ``done`` (a rollout stopped by anytime inference)."""
        for step in self.steps:
            if step > done:
                self(step, final.rates, final.decoded)

    def history(self) -> dict | None:
        """{"steps": (S,) int64, "rates": (S, B, K), "spikes": (S, B, K)}, or None when nothing was asked for."""
        if not self.steps:
            return None
        return {"steps": np.asarray(self.steps, dtype=np.int64), "rates": torch.stack(self._rates),
                "spikes": torch.stack(self._spikes)}
