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

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fond.errors import DataError
from fond.metrics import gaussian_nll, r2_per_sample, zeros_fraction
from fond.result import TRACE_KEYS, InferenceResult

__all__ = ["Step", "InferenceSteps", "run_inference", "Recorder", "TraceRecorder", "check_record",
           "state_step_norm"]

State = tuple[Tensor, ...]


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
                  trace: bool = True, record=None) -> InferenceResult:
    """Run ``steps`` steps of ``method`` on x and return the ``InferenceResult``.

    x: (B, D) a fixed input, or (steps, B, D) an online input whose frame x[t − 1] drives step t (the trace's
    R² and NLL are then measured against that frame). ``trace``: record ``InferenceResult.trace`` (per-step
    batch means). ``record``: 1-based steps whose mean code and sample to keep in ``InferenceResult.history``.
    Call under ``torch.no_grad()``; inputs are expected checked (``fond.models.common``).
    """
    recorder = Recorder(record, steps)
    tracer = TraceRecorder(method) if trace else None
    online = x.ndim == 3
    frame = x[0] if online else x
    current = method.start(frame, generator, trace=trace)
    for t in range(steps):
        if online and t > 0:
            frame = x[t]
        new = method.step(current, frame, generator)
        recorder(t + 1, new.rates, new.decoded)
        if tracer is not None:
            tracer(frame, new, current)
        current = new
    return result_of(method, method.finish(current), steps, tracer, recorder)


def result_of(method: InferenceSteps, final: Step, steps: int, tracer: TraceRecorder | None,
              recorder: Recorder) -> InferenceResult:
    """The ``InferenceResult`` of a rollout whose read-out is ``final``."""
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
    )


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

    def history(self) -> dict | None:
        """{"steps": (S,) int64, "rates": (S, B, K), "spikes": (S, B, K)}, or None when nothing was asked for."""
        if not self.steps:
            return None
        return {"steps": np.asarray(self.steps, dtype=np.int64), "rates": torch.stack(self._rates),
                "spikes": torch.stack(self._spikes)}
