"""Uncertainty weighting: weights from learned homoscedastic log-variances."""

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


class UncertaintyConvention(TypedDict):
  """The settings of :func:`uncertainty_weighting` of one reference."""

  initial_log_variance: float
  learning_rate: float
  weight_decay: float


UNCERTAINTY_CONVENTIONS: Mapping[str, UncertaintyConvention] = (
    types.MappingProxyType({
        # LibMTL, weighting/UW.py: s starts at -0.5 and moves with the model's
        # optimizer (torch Adam lr 1e-4, coupled L2 1e-5).
        "libmtl": UncertaintyConvention(
            initial_log_variance=-0.5, learning_rate=1e-4, weight_decay=1e-5
        ),
        # PhysicsNeMo-Sym, loss/aggregator.py, HomoscedasticUncertainty: s
        # starts at 0, an Adam group of lr 1e-3.
        "physicsnemo": UncertaintyConvention(
            initial_log_variance=0.0, learning_rate=1e-3, weight_decay=0.0
        ),
    })
)


class UncertaintyState(NamedTuple):
  """State of :func:`uncertainty_weighting`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    log_variance: ``[K]`` the learned ``s_k = log sigma_k^2``.
    opt_state: the state of ``s``'s own optimizer.
    weights: ``[K]`` the weights ``1 / (2 e^{s_k})`` applied at the last step.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  log_variance: jax.Array
  opt_state: Any
  weights: jax.Array
  num_skipped: jax.Array


def _scaled_loss(losses: jax.Array, s: jax.Array) -> jax.Array:
  """``e^{-s} L`` in log space, saturating at ``e^{80}`` in magnitude.

  Only losses beyond ~1e34 e^s reach the bound, where the plain product
  overflows; the optimizer normalises the step anyway.
  """
  tiny = jnp.finfo(losses.dtype).tiny
  log_scaled = jnp.log(jnp.maximum(jnp.abs(losses), tiny)) - s
  return jnp.sign(losses) * jnp.exp(jnp.minimum(log_scaled, 80.0))


def uncertainty_weighting(
    num_losses: LossSpec,
    *,
    initial_log_variance: ArrayLike = -0.5,
    learning_rate: ArrayLike = 1e-4,
    weight_decay: ArrayLike = 1e-5,
    optimizer: optax.GradientTransformation | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Uncertainty weighting (Kendall, Gal, Cipolla, 2018).

  .. math::
    \mathcal L = \sum_k \frac{L_k}{2 e^{s_k}} + \frac{s_k}{2}, \qquad
    \lambda_k = \frac{1}{2 e^{s_k}}, \qquad
    \frac{\partial \mathcal L}{\partial s_k} = \frac{1 - e^{-s_k} L_k}{2}

  ``s_k = log sigma_k^2`` is learned with its own optimizer (in the rule's
  state) from the closed-form gradient above; its stationary point is
  ``e^{s_k} = L_k``, i.e. weights ``1 / (2 L_k)``. The weights applied at a
  step are those from before its update. LibMTL's ``L/(2e^s) + s/2`` and
  PhysicsNeMo's ``(e^{-s} L + s)/2`` are the same function; they differ in
  the initial ``s`` and the optimizer (``UNCERTAINTY_CONVENTIONS``). The
  model's direction is ``sum_k lambda_k grad L_k``: one VJP as for any rule
  (the ``s/2`` terms do not depend on the model).

  A loss that stays large therefore loses weight: on the published Poisson
  ``sin(8 pi x)`` PINN, whose boundary loss grows early, both conventions
  failed seeds that equal weights passed (LibMTL's 9 of 20, equal weights 3;
  ``docs/studies.md``). Prefer a gradient rule for a PINN.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    initial_log_variance: ``s`` at the start (-0.5: LibMTL; 0: PhysicsNeMo).
    learning_rate: of ``s``'s default optimizer (torch-style Adam), ``> 0``.
    weight_decay: coupled L2 of that optimizer, ``>= 0``.
    optimizer: an optax optimizer for ``s`` instead of the default.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`UncertaintyState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.uncertainty_weighting(2, **sa.UNCERTAINTY_CONVENTIONS["physicsnemo"])
    >>> w, state = rule.update(rule.init(), jnp.array([4.0, 0.25]))
    >>> w.tolist()   # 1 / (2 e^0)
    [0.5, 0.5]
    >>> bool(state.log_variance[0] > 0 > state.log_variance[1])   # toward log L
    True

  References:
    Kendall, Gal, Cipolla, *Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics*, CVPR 2018.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_float("initial_log_variance", initial_log_variance)
  _checks.check_float("learning_rate", learning_rate, positive=True)
  _checks.check_float("weight_decay", weight_decay, minimum=0.0)
  opt = (
      optimizer
      if optimizer is not None
      else _protocol.coupled_adam(learning_rate, weight_decay)
  )

  def weights_of(s: jax.Array) -> jax.Array:
    return 0.5 * jnp.exp(-s)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> UncertaintyState:
    del key  # deterministic
    s = jnp.full((k,), initial_log_variance, dtype)
    return UncertaintyState(
        count=jnp.zeros((), jnp.int32),
        log_variance=s,
        opt_state=opt.init(s),
        weights=weights_of(s),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: UncertaintyState, losses: jax.Array) -> UncertaintyState:
    s = state.log_variance
    grad = 0.5 * (1.0 - _scaled_loss(losses, s))
    updates, opt_state = opt.update(grad, state.opt_state, s)
    return state._replace(
        log_variance=jnp.asarray(optax.apply_updates(s, updates)).astype(s.dtype),
        opt_state=opt_state,
        weights=weights_of(s),
    )

  def diagnostics_fn(state: UncertaintyState) -> dict[str, jax.Array]:
    return {"log_variance": state.log_variance}

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )
