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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError
from fond.metrics import gaussian_nll, r2_per_sample, zeros_fraction
from fond.result import TRACE_KEYS, InferenceResult

__all__ = ["Step", "InferenceSteps", "run_inference", "Convergence", "Recorder", "TraceRecorder", "check_record",
           "state_step_norm", "DEFAULT_WINDOW"]

State = tuple[Tensor, ...]

#: anytime inference's default window (steps): long enough to average a spiking code's step-to-step noise
DEFAULT_WINDOW = 50


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
        """The state at t = 0 for the first frame (B, D); ``trace``: whether the loop will read each step's state."""

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


def state_step_norm(new_state: State, state: State) -> Tensor:
    """‖new_state − state‖₂ over all state tensors together, per input: (B,)."""
    return torch.cat([a - b for a, b in zip(new_state, state, strict=True)], dim=-1).norm(dim=-1)


def run_inference(method: InferenceSteps, x: Tensor, steps: int, *, generator: torch.Generator | None = None,
                  trace: bool = True, record=None, tol: float | None = None,
                  window: int = DEFAULT_WINDOW) -> InferenceResult:
    """Run ``steps`` steps of ``method`` on x and return the ``InferenceResult``.

    x: (B, D) a fixed input, or (steps, B, D) an online input whose frame x[t − 1] drives step t (the trace's
    R² and NLL are then measured against that frame). ``trace``: record ``InferenceResult.trace`` (per-step
    batch means). ``record``: 1-based steps whose mean code and sample to keep in ``InferenceResult.history``.
    ``tol``: anytime inference (``Convergence``: each input is frozen once its mean code has settled within
    ``tol`` over two windows of ``window`` steps, and the rollout stops when all are; fixed input only). The
    trace and history then still cover all ``steps``: past the stop they hold the frozen values (what more
    steps would give: ``du_norm`` 0, the prior term of an unmoved state).
    Call under ``torch.no_grad()``; inputs are expected checked (``fond.models.common``).
    """
    online = x.ndim == 3
    watch = None if tol is None else Convergence(tol, window, steps, online=online)
    recorder = Recorder(record, steps)
    tracer = TraceRecorder(method) if trace else None
    frame = x[0] if online else x
    current = method.start(frame, generator, trace=trace or watch is not None)
    done = steps
    for t in range(steps):
        if online and t > 0:
            frame = x[t]
        new = method.step(current, frame, generator)
        if watch is not None:
            new = watch(t + 1, new)
        recorder(t + 1, new.rates, new.decoded)
        if tracer is not None:
            tracer(frame, new, current)
        current = new
        if watch is not None and watch.all_frozen:
            done = t + 1
            break
    final = method.finish(current)
    if watch is None:
        return result_of(method, final, steps, tracer, recorder)
    final = watch.hold(final)
    recorder.hold(done, final)
    if tracer is not None:
        tracer.hold(steps, final)
    return result_of(method, final, steps, tracer, recorder, watch.steps_used)


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
        trace={} if tracer is None else tracer.arrays(),
        history=recorder.history(),
        steps_used=steps_used,
    )


class Convergence:
    """Anytime inference: freezes each input of a batch once its mean code has settled.

    The criterion, checked at the end of every window of ``window`` steps from the second on (t = 2w, 3w, …):
    input b has converged at step t when the mean of its mean code over steps t − w + 1..t, m, and over the
    window before, m', satisfy ‖m − m'‖₂ ≤ ``tol`` · max(‖m‖₂, ‖m'‖₂) (norms over the K neurons; a silent code
    that stays silent has converged). From then on its state, mean code and sample are those of step t (the
    method still steps the whole batch, so every other input draws exactly what it would without ``tol``);
    ``steps_used`` (B,) int64 holds t for it, ``steps`` for an input that never converged. A spiking code
    fluctuates around its posterior mean: a ``tol`` below that noise (≈ its relative spread / √w) never
    fires and the rollout runs its ``steps``.
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
        self.frozen: Tensor | None = None  # (B,) bool
        self.snapshot: Step | None = None  # frozen inputs' state, mean code and sample (other rows unused)
        self._sum: Tensor | None = None
        self._previous: Tensor | None = None

    @property
    def all_frozen(self) -> bool:
        return self.frozen is not None and bool(self.frozen.all())

    def __call__(self, t: int, new: Step) -> Step:
        """Step ``t`` (1-based) as the loop continues with it: frozen inputs held; checks at window ends."""
        if self.frozen is None:
            self.frozen = torch.zeros(new.rates.shape[0], dtype=torch.bool, device=new.rates.device)
            self.steps_used = torch.full_like(self.frozen, self.steps, dtype=torch.int64)
        new = self.hold(new)
        self._sum = new.rates.clone() if self._sum is None else self._sum.add_(new.rates)
        if t % self.window == 0:
            mean, self._sum = self._sum / self.window, None
            if self._previous is not None:
                change = (mean - self._previous).norm(dim=-1)
                scale = torch.maximum(mean.norm(dim=-1), self._previous.norm(dim=-1))
                self._freeze((change <= self.tol * scale) & ~self.frozen, new, t)
            self._previous = mean
        return new

    def hold(self, step: Step) -> Step:
        """``step`` with the frozen inputs' rows replaced by their frozen values."""
        if self.snapshot is None:
            return step
        keep = self.frozen[:, None]
        return Step(tuple(torch.where(keep, a, b) for a, b in zip(self.snapshot.state, step.state, strict=True)),
                    torch.where(keep, self.snapshot.rates, step.rates),
                    torch.where(keep, self.snapshot.decoded, step.decoded), carry=step.carry)

    def _freeze(self, rows: Tensor, step: Step, t: int) -> None:
        if not bool(rows.any()):
            return
        if self.snapshot is None:
            self.snapshot = Step(tuple(s.clone() for s in step.state), step.rates.clone(), step.decoded.clone())
        else:
            for held, now in zip((*self.snapshot.state, self.snapshot.rates, self.snapshot.decoded),
                                 (*step.state, step.rates, step.decoded), strict=True):
                held[rows] = now[rows]
        self.frozen |= rows
        self.steps_used[rows] = t


class TraceRecorder:
    """Per-step batch means of ``TRACE_KEYS`` (their meanings: ``fond.result.InferenceResult``)."""

    def __init__(self, method: InferenceSteps) -> None:
        self.method = method
        self.values: dict[str, list[float]] = {key: [] for key in TRACE_KEYS}
        self._state: State | None = None
        self._state_terms: dict[str, Any] = {}

    def __call__(self, frame: Tensor, new: Step, previous: Step) -> None:
        """Measure step ``new`` (reached from ``previous``) against ``frame`` (B, D)."""
        reconstruction = self.method.decode(new.decoded)
        nll = gaussian_nll(frame, reconstruction, self.method.log_sigma)
        r2 = float(r2_per_sample(frame, reconstruction).mean())
        if new.state is not self._state:
            self._state, self._state_terms = new.state, self._terms_of_state(frame, new, previous, r2)
        terms = self._state_terms
        moved = new.state is not previous.state
        values = {"r2": r2, "r2_rates": terms["r2_rates"], "zeros": float(zeros_fraction(new.decoded).mean()),
                  "du_norm": float(state_step_norm(new.state, previous.state).mean()) if moved else 0.0,
                  "nll": float(nll.mean()), "kl": float(terms["kl"].mean()), "nelbo": float((nll + terms["kl"]).mean()),
                  "rate_max": terms["rate_max"], "saturated": terms["saturated"]}
        for key, value in values.items():
            self.values[key].append(value)

    def hold(self, steps: int, final: Step) -> None:
        """Extend the trace to ``steps`` with the values of a rollout that no longer moves (every input
        frozen by anytime inference): each key's last value, ``du_norm`` 0, the prior term of an unmoved state."""
        missing = steps - len(self.values["r2"])
        if missing <= 0:
            return
        kl = float(self.method.prior_term(final, final).mean())
        held = {key: values[-1] for key, values in self.values.items()}
        held.update(du_norm=0.0, kl=kl, nelbo=held["nll"] + kl)
        for key, value in held.items():
            self.values[key].extend([value] * missing)

    def _terms_of_state(self, frame: Tensor, new: Step, previous: Step, r2: float) -> dict[str, Any]:
        """The terms that depend on the state alone (and the frame it is judged against)."""
        method = self.method
        r2_rates = r2 if new.rates is new.decoded else float(r2_per_sample(frame, method.decode(new.rates)).mean())
        return {"r2_rates": r2_rates, "kl": method.prior_term(new, previous), "rate_max": float(new.rates.max()),
                "saturated": float(method.saturated(new).float().mean())}

    def arrays(self) -> dict[str, np.ndarray]:
        """The trace: one array of length ``steps`` per key."""
        return {key: np.asarray(values) for key, values in self.values.items()}


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
