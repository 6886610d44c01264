"""FAMO: fast adaptive multitask optimisation, weights from a learned softmax."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._structure import LossSpec, LossStructure

FORMS = ("exact", "one_pass")
_EPS = 1e-8


class FAMOConvention(TypedDict):
  """The settings of :func:`famo` of one reference."""

  learning_rate: float
  weight_decay: float
  uniform_mix: float


FAMO_CONVENTIONS: Mapping[str, FAMOConvention] = types.MappingProxyType({
    # Cranial-XIX/FAMO, famo.py (the class default).
    "famo": FAMOConvention(learning_rate=0.025, weight_decay=0.01, uniform_mix=0.0),
    # LibMTL's FAMO and FAMO's NYUv2 / QM9 / CelebA runs.
    "libmtl": FAMOConvention(learning_rate=0.025, weight_decay=1e-3, uniform_mix=0.0),
})


class FAMOState(NamedTuple):
  """State of :func:`famo`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    logits: ``[K]`` the learned ``xi`` (``z = softmax(xi)``), starting at 0.
    opt_state: the state of ``xi``'s own optimizer.
    previous_losses: ``[K]`` the losses of the last recorded step (before its
      model step): the "before" of the next update.
    num_updates: int32 scalar, updates of ``xi`` made.
    weights: ``[K]`` the effective weights applied at the last step (sum 1).
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  logits: jax.Array
  opt_state: Any
  previous_losses: jax.Array
  num_updates: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def famo(
    num_losses: LossSpec,
    *,
    form: str = "exact",
    learning_rate: ArrayLike = 0.025,
    weight_decay: ArrayLike = 0.01,
    min_losses: ArrayLike = 0.0,
    uniform_mix: ArrayLike = 0.01,
    optimizer: optax.GradientTransformation | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""FAMO (Liu et al., NeurIPS 2023): weights that balance the losses' log-decrease.

  .. math::
    z = \mathrm{softmax}(\xi), \quad D_k = L_k - L_k^{\min} + 10^{-8},
    \quad \tilde\lambda_k = \frac{z_k / D_k}{\sum_j z_j / D_j},
    \quad \lambda_k = (1 - m)\,\tilde\lambda_k + m / K

  (the gradient of FAMO's objective ``sum_k z_k log D_k / c`` is
  ``sum_k lambda~_k grad L_k``: weights summing to 1). ``m``
  (``uniform_mix``) mixes in the equal weights, so that every loss keeps at
  least ``m / K`` of the weight: FAMO's own ``lambda~ ~ z / L`` hands a loss
  that can reach 0 all the weight (on the Helmholtz PINN, whose boundary
  loss is 0 at ``u = 0``, the residual's weight fell to 1e-11 and the
  network learned nothing in 5 of 5 seeds). ``m = 0`` is the paper's rule
  (``FAMO_CONVENTIONS``). ``xi`` learns from how
  much each log-loss fell over a step:
  ``delta = log D(before) - log D(after)``, ``grad_xi = J_softmax^T delta``,
  one step of its own optimizer (torch-style Adam with coupled L2 ``gamma``,
  ``chain(add_decayed_weights(gamma), scale_by_adam(), scale(-lr))``).

  - ``form="exact"``, the authors' algorithm: "after" is the losses on the
    SAME batch after the model step: one extra forward. Give them with
    :func:`observe_after_step` (``opt_state = sa.observe_after_step(opt_state,
    rule, fun(new_params, batch))``) or ``rule.observe_after_step(state,
    losses)``; without them ``xi`` never moves.
  - ``form="one_pass"``, an approximation that no extra forward needs: at
    each step, ``xi`` first learns from the previous step's losses and this
    step's (each on its own batch), then weights. It equals the exact form
    when the next step's losses are those after the step (full batch).

  ``FAMO_CONVENTIONS`` holds ``famo.py``'s (``gamma = 0.01``) and LibMTL's
  (``1e-3``) settings.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    form: ``"exact"`` or ``"one_pass"``.
    learning_rate: of ``xi``'s default optimizer, ``> 0``.
    weight_decay: ``gamma``, coupled L2 of that optimizer, ``>= 0``.
    min_losses: ``L^min``, the lowest value each loss can take (0 for
      nonnegative losses; traced).
    uniform_mix: ``m`` in ``[0, 1]``, the share of the equal weights mixed
      into FAMO's (traced). The default 0.01 keeps every weight at least
      ``0.01 / K``; 0 is the published rule.
    optimizer: an optax optimizer for ``xi`` instead of the default.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`FAMOState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.famo(2)
    >>> w, state = rule.update(rule.init(), jnp.array([1.0, 4.0]))
    >>> [round(x, 4) for x in w.tolist()]   # z = 1/2: ~ 1 / L, 1 % equal mixed in
    [0.797, 0.203]
    >>> state = rule.observe_after_step(state, jnp.array([0.5, 3.9]))
    >>> w, state = rule.update(state, jnp.array([0.5, 3.9]))
    >>> bool(state.logits[1] > state.logits[0])   # the slow loss gains z
    True

  References:
    Liu, Feng, Stone, Liu, *FAMO: Fast Adaptive Multitask Optimization*,
    NeurIPS 2023 (arXiv:2306.03792); code ``Cranial-XIX/FAMO``.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_choice("form", form, FORMS)
  _checks.check_float("learning_rate", learning_rate, positive=True)
  _checks.check_float("weight_decay", weight_decay, minimum=0.0)
  _checks.check_float("min_losses", min_losses)
  _checks.check_float("uniform_mix", uniform_mix, minimum=0.0, maximum=1.0)
  opt = (
      optimizer
      if optimizer is not None
      else _protocol.coupled_adam(learning_rate, weight_decay)
  )

  def log_distance(losses: jax.Array) -> jax.Array:
    d = losses - jnp.asarray(min_losses, losses.dtype) + _EPS
    return jnp.log(jnp.maximum(d, jnp.finfo(losses.dtype).tiny))

  def weights_of(logits: jax.Array, losses: jax.Array) -> jax.Array:
    # lambda_k ~ z_k / D_k, computed in log space: no overflow at tiny D.
    u = jax.nn.log_softmax(logits) - log_distance(losses)
    return _protocol.mix_uniform(jax.nn.softmax(u), uniform_mix)

  def learn(state: FAMOState, before: jax.Array, after: jax.Array) -> FAMOState:
    delta = log_distance(before) - log_distance(after)
    grad = _protocol.softmax_vjp(state.logits, delta)
    updates, opt_state = opt.update(grad, state.opt_state, state.logits)
    return state._replace(
        logits=jnp.asarray(optax.apply_updates(state.logits, updates)).astype(
            state.logits.dtype
        ),
        opt_state=opt_state,
        num_updates=_protocol.saturating_increment(state.num_updates, True),
    )

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> FAMOState:
    del key  # deterministic
    logits = jnp.zeros((k,), dtype)
    return FAMOState(
        count=jnp.zeros((), jnp.int32),
        logits=logits,
        opt_state=opt.init(logits),
        previous_losses=jnp.ones((k,), dtype),
        num_updates=jnp.zeros((), jnp.int32),
        weights=jnp.full((k,), 1.0 / k, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: FAMOState, losses: jax.Array) -> FAMOState:
    if form == "one_pass":
      learned = learn(state, state.previous_losses, losses)
      state = jax.tree.map(
          lambda new, old: jnp.where(state.count >= 2, new, old), learned, state
      )
    return state._replace(
        previous_losses=losses, weights=weights_of(state.logits, losses)
    )

  def observe_fn(state: FAMOState, after: jax.Array) -> FAMOState:
    ok = jnp.all(jnp.isfinite(after)) & (state.count >= 1)
    learned = learn(state, state.previous_losses, after)
    return jax.tree.map(lambda new, old: jnp.where(ok, new, old), learned, state)

  def diagnostics_fn(state: FAMOState) -> dict[str, jax.Array]:
    return {"z": jax.nn.softmax(state.logits)}

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
      # The one-pass form learns from the next step's losses by itself.
      observe_fn=observe_fn if form == "exact" else None,
  )
