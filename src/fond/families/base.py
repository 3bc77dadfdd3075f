"""What FOND asks of a distribution family — the interface the fixed dynamics consume.

A family is a frozen dataclass of its own options (validated on construction, JSON-ready through
``dataclasses.asdict``) whose methods are pure functions of explicit tensors:

- ``init_parameters(n_latents, generator)``: the family's learned tensors (initial state, step sizes,
  activation gains), by name. The model registers them as parameters; the family never holds tensors.
- ``initial_state(params, batch_size)``: the state tuple at t = 0 (e.g. ``(u,)`` or ``(μ, log σ)``).
- ``sample(state, params, generator, temperature)``: a draw from q; ``temperature`` is the relaxation of
  a training sample, ``None`` asks for the evaluation sample (exact counts, hard binaries, τ = 1).
- ``activation(z, params)`` and ``activation_derivative(z, params)``: the decoder input f(z) and f'(z)
  (``None`` for the identity, which skips a multiplication).
- ``natural_gradient(state, sample, grad_z, bias, params)``: G(state)⁻¹ ∂F/∂state from ∂F/∂z of the
  single-sample reconstruction term at the online prior (where the KL's gradient vanishes), plus the
  learned bias; one tensor per state tensor.
- ``descend(state, direction, params, clamp_fraction)``: state − η·direction through the family's soft
  clamps; ``clamp_fraction`` ∈ [0, 1] is how far the clamp bounds have ramped (1 in evaluation).
- ``kl(state, prior_state)``: KL(q ‖ q_prior) per latent, (B, K), nats.
- ``mean_code(state, params)``: the code a downstream reader sees (rates e^u, f(μ), p), (B, K).
- ``saturated(state, params)``: (B,) bool, inputs whose state sits at the clamp bound (a blow-up sign).

``fond.dynamics.fond_step`` composes these into one step; a new family is one new file that subclasses
``Family`` and registers itself with ``@register_family("name")``. ``PotentialFamily`` is the base of the
families whose state is one potential per latent (Poisson, Bernoulli): learned uniform initial potentials,
one step size, a ramped clamp, natural gradient ∂F/∂(mean code). A family with a fused evaluation engine
registers it for its decoder operators with ``fond.engine.register_engine``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from fond.errors import ConfigError

__all__ = ["Family", "PotentialFamily", "Sample", "State", "ramp", "register_family", "family_class", "family_names",
           "make_family"]

State = tuple[Tensor, ...]
Params = Mapping[str, Tensor]


class Sample(NamedTuple):
    """A draw z ~ q (B, K) and, for reparameterised families, the noise ε it was made from."""

    value: Tensor
    noise: Tensor | None = None


class Family(ABC):
    """Base class of the distribution families (subclasses are frozen dataclasses of options)."""

    name: ClassVar[str] = ""
    state_names: ClassVar[tuple[str, ...]] = ()
    #: evaluation samples are integer counts (spikes), shown as such in reports
    integer_samples: ClassVar[bool] = False

    def validate(self) -> None:  # noqa: B027  (optional hook: a family without options has nothing to check)
        """Raise ``ConfigError`` naming the bad option; called by ``__post_init__``."""

    def __post_init__(self) -> None:
        self.validate()

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def _require(self, condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"config key 'family_options.{key}' ({self.name}): {message}")

    @abstractmethod
    def init_parameters(self, n_latents: int, generator: torch.Generator) -> dict[str, Tensor]: ...

    @abstractmethod
    def initial_state(self, params: Params, batch_size: int) -> State: ...

    @abstractmethod
    def sample(self, state: State, params: Params, generator: torch.Generator | None,
               temperature: float | None, mean_code: Tensor | None = None) -> Sample:
        """A draw from q(state): exact (``temperature`` None) or relaxed. ``mean_code``: the state's mean code
        where the caller already has it (``training_update`` returns it), which a family may use instead of
        computing it again (same value, same gradient)."""

    def activation(self, z: Tensor, params: Params) -> Tensor:
        return z

    def activation_derivative(self, z: Tensor, params: Params) -> Tensor | None:
        return None

    @abstractmethod
    def natural_gradient(self, state: State, sample: Sample, grad_z: Tensor, bias: Tensor,
                         params: Params) -> State: ...

    @abstractmethod
    def descend(self, state: State, direction: State, params: Params, clamp_fraction: float) -> State: ...

    @abstractmethod
    def kl(self, state: State, prior_state: State) -> Tensor: ...

    @abstractmethod
    def mean_code(self, state: State, params: Params) -> Tensor: ...

    def saturated(self, state: State, params: Params) -> Tensor:
        return torch.zeros(state[0].shape[0], dtype=torch.bool, device=state[0].device)

    def training_update(self, state: State, sample: Sample, error_pullback: Tensor, bias: Tensor, params: Params,
                        clamp_fraction: float, gradient_bound: float,
                        mean_code: Tensor | None = None) -> tuple[State, Tensor, Tensor] | None:
        """A fused training step, or None (the default: ``fond.dynamics`` composes ``natural_gradient``,
        ``descend`` and ``kl``). If offered: (the state ``fond_step`` would give, its KL to ``state`` summed
        over latents (B,), the new state's mean code), with the gradients autograd of that composition gives,
        each element of the gradient reaching the new state bounded by ``gradient_bound``. ``mean_code``: the
        input state's, where the caller has it (the previous call's)."""
        return None


def ramp(initial: float, final: float, clamp_fraction: float) -> float:
    """A clamp bound after ``clamp_fraction`` ∈ [0, 1] of its ramp from ``initial`` to ``final`` (``final``
    from 1 on)."""
    if clamp_fraction >= 1.0:
        return final
    return initial + clamp_fraction * (final - initial)


class PotentialFamily(Family):
    """A family whose state is one potential per latent, ``(v,)`` (Poisson's u, Bernoulli's logit), whose
    natural gradient is ∂F/∂(mean code) with the spikes in place of the code (plus the bias b), and whose
    learned tensors are ``log_step_size`` (1,) and the initial potentials ``<state name>_init`` (K,), drawn
    uniformly from ``initial_range()``. Subclasses have the options ``clamp_init`` and ``clamp_final``: the
    clamp bound ``clamp(clamp_fraction)`` ramps between them."""

    clamp_init: float
    clamp_final: float

    @abstractmethod
    def initial_range(self) -> tuple[float, float]:
        """(low, high) of the uniform initial potentials."""

    def clamp(self, clamp_fraction: float) -> float:
        """The clamp bound c after ``clamp_fraction`` of its ramp from ``clamp_init`` to ``clamp_final``."""
        return ramp(self.clamp_init, self.clamp_final, clamp_fraction)

    @property
    def initial_key(self) -> str:
        """The name of the learned initial potentials: ``u_init``, ``logit_init``."""
        return f"{self.state_names[0]}_init"

    def init_parameters(self, n_latents: int, generator: torch.Generator) -> dict[str, Tensor]:
        low, high = self.initial_range()
        return {"log_step_size": torch.zeros(1),
                self.initial_key: low + (high - low) * torch.rand(n_latents, generator=generator)}

    def initial_state(self, params: Params, batch_size: int) -> State:
        return (params[self.initial_key].expand(batch_size, -1),)

    def natural_gradient(self, state: State, sample: Sample, grad_z: Tensor, bias: Tensor, params: Params) -> State:
        # G(v)⁻¹∂F/∂v = ∂F/∂(mean code) (the Fisher metric is the code's derivative), with the spikes z in place
        # of the code in the reconstruction gradient
        return (grad_z + bias,)


_REGISTRY: dict[str, type[Family]] = {}


def register_family(name: str):
    """Class decorator: make a ``Family`` subclass available as ``ModelConfig(family=name)``."""

    def decorate(cls: type[Family]) -> type[Family]:
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise TypeError("register_family decorates subclasses of fond.families.Family")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a family named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def family_names() -> tuple[str, ...]:
    """The registered family names, sorted. The built-in families are registered by the ``fond.families``
    package, which Python imports before this module, so they are always among them."""
    return tuple(sorted(_REGISTRY))


def family_class(name: str) -> type[Family]:
    names = family_names()
    if name not in _REGISTRY:
        raise ConfigError(f"config key 'family': unknown family {name!r}; expected one of {names}")
    return _REGISTRY[name]


def make_family(name: str, options: Mapping[str, Any] | None = None) -> Family:
    """The family ``name`` with ``options`` (unknown keys and bad values raise ``ConfigError``)."""
    cls = family_class(name)
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"config key 'family_options.{unknown[0]}': not an option of the {name} family "
                          f"(options: {', '.join(sorted(known))})")
    return cls(**options)
