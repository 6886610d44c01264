"""GradNorm: learnable weights that equalise the rates at which the losses train."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax import _statistics as st
from softadapt_jax._structure import LossSpec, LossStructure

PARAMETERIZATIONS = ("softmax", "exp", "direct")


class GradNormConvention(TypedDict):
  """The settings of :func:`gradnorm` of one reference implementation."""

  alpha: float
  parameterization: str
  learning_rate: float
  weight_decay: float


GRADNORM_CONVENTIONS: Mapping[str, GradNormConvention] = types.MappingProxyType({
    # LibMTL, weighting/GradNorm.py: w = K softmax(xi), alpha 1.5, xi moved by
    # the model's own optimizer (torch Adam lr 1e-4, coupled L2 1e-5).
    "libmtl": GradNormConvention(
        alpha=1.5, parameterization="softmax", learning_rate=1e-4,
        weight_decay=1e-5,
    ),
    # PhysicsNeMo-Sym, loss/aggregator.py, GradNorm: w = exp(lambda) shifted
    # to sum K, alpha 1, an Adam group of lr 1e-3; statistics on params[-2].
    "physicsnemo": GradNormConvention(
        alpha=1.0, parameterization="exp", learning_rate=1e-3, weight_decay=0.0,
    ),
})


class GradNormState(NamedTuple):
  """State of :func:`gradnorm`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    clock: int32 scalar, calls (recorded or not).
    param: ``[K]`` the learnable parameter of the weights (``xi``,
      ``lambda`` or ``w``, by the parameterisation).
    opt_state: the state of the parameter's own optimizer.
    initial_sum: ``[K]`` the sum of the losses of the first
      ``initial_steps`` recorded steps; ``L(0)`` is their mean.
    weights: ``[K]`` the weights applied at the last step (summing to ``K``).
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  param: jax.Array
  opt_state: Any
  initial_sum: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def gradnorm(
    num_losses: LossSpec,
    *,
    alpha: ArrayLike = 1.5,
    parameterization: str = "softmax",
    learning_rate: ArrayLike = 1e-4,
    weight_decay: ArrayLike = 1e-5,
    optimizer: optax.GradientTransformation | None = None,
    initial_steps: int = 1,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""GradNorm (Chen et al., 2018) with the closed-form gradient of its loss.

  .. math::
    n_k = w_k \|\nabla_W L_k\|, \quad
    r_k = \frac{L_k(t) / L_k(0)}{\mathrm{mean}_j\, L_j(t) / L_j(0)}, \quad
    T_k = \bar n\, r_k^\alpha \ (\text{held constant}),

    L_{\mathrm{grad}} = \sum_k |n_k - T_k|, \qquad
    \frac{\partial L_{\mathrm{grad}}}{\partial w_k} =
    \mathrm{sign}(n_k - T_k)\, \|\nabla_W L_k\|

  (no second-order derivative: the norms are taken at this step's parameters
  and the target is a constant, as in the paper). The weights ``w`` (sum
  ``K``) are a function of a learnable parameter stepped by its own optax
  optimizer, whose state lives in the rule's state:

  - ``"softmax"`` (LibMTL): ``w = K softmax(xi)``, ``xi`` starts equal;
  - ``"exp"`` (PhysicsNeMo): ``w = exp(lambda)``, ``lambda`` shifted before
    each step so that ``w`` sums to ``K``;
  - ``"direct"`` (the paper): ``w`` itself, renormalised to sum ``K`` after
    each step.

  The weights applied at a step are those from before its update (both
  references). ``L(0)`` is the mean of the losses of the first
  ``initial_steps`` recorded steps (1: the first losses, as the paper and
  PhysicsNeMo; LibMTL uses the mean of the first epoch), during which the
  weights stay equal; the updates start on the step that completes it.
  ``W`` (``wrt``) is the parameter subset of the norms: the paper and
  PhysicsNeMo use the last shared layer, LibMTL all shared parameters.
  ``GRADNORM_CONVENTIONS`` holds LibMTL's and PhysicsNeMo's settings.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    alpha: the restoring-force exponent, ``>= 0`` (traced).
    parameterization: ``"softmax"``, ``"exp"`` or ``"direct"``.
    learning_rate: of the default optimizer (torch-style Adam), ``> 0``.
    weight_decay: coupled L2 of the default optimizer, ``>= 0``.
    optimizer: an optax optimizer for the parameter instead of the default.
    initial_steps: recorded steps averaged into ``L(0)`` (static int >= 1).
    wrt: ``(path, leaf) -> bool``, the parameters ``W`` of the norms, or
      ``None`` for all.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`GradNormState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.gradnorm(2, alpha=1.0, learning_rate=0.1)
    >>> state = rule.init()
    >>> w, state = rule.update(state, jnp.array([1.0, 1.0]),
    ...                        {"norm": jnp.array([4.0, 1.0])})
    >>> w.tolist()   # applied: equal; the step moves weight to the small norm
    [1.0, 1.0]
    >>> bool(state.param[1] > state.param[0])
    True

  References:
    Chen, Badrinarayanan, Lee, Rabinovich, *GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks*, ICML 2018.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_choice("parameterization", parameterization, PARAMETERIZATIONS)
  _checks.check_float("alpha", alpha, minimum=0.0)
  _checks.check_float("learning_rate", learning_rate, positive=True)
  _checks.check_float("weight_decay", weight_decay, minimum=0.0)
  initial_steps = _checks.check_int("initial_steps", initial_steps, minimum=1)
  opt = (
      optimizer
      if optimizer is not None
      else _protocol.coupled_adam(learning_rate, weight_decay)
  )
  spec = st.GradientStatistics(
      per_component=lambda g: {"norm": jnp.sqrt(st.squared_norm(g))}, wrt=wrt
  )

  def weights_of(param: jax.Array) -> jax.Array:
    if parameterization == "softmax":
      return k * jax.nn.softmax(param)
    if parameterization == "exp":
      return jnp.exp(param)
    return param

  def normalised(param: jax.Array) -> jax.Array:
    if parameterization == "exp":
      return param + jnp.log(k / jnp.sum(jnp.exp(param)))
    if parameterization == "direct":
      return param * (k / jnp.sum(param))
    return param

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> GradNormState:
    del key  # deterministic
    param = (
        jnp.ones((k,), dtype)
        if parameterization in ("softmax", "direct")
        else jnp.zeros((k,), dtype)
    )
    return GradNormState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        param=param,
        opt_state=opt.init(param),
        initial_sum=jnp.zeros((k,), dtype),
        weights=jnp.ones((k,), dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: GradNormState,
      losses: jax.Array,
      stats: st.Statistics,
      due: jax.Array,
  ) -> GradNormState:
    del due  # every step
    dtype = state.weights.dtype
    warm = state.count <= initial_steps
    initial_sum = jnp.where(warm, state.initial_sum + losses, state.initial_sum)
    initial = initial_sum / jnp.minimum(state.count, initial_steps).astype(dtype)
    param = normalised(state.param)
    w = weights_of(param)
    m = stats["norm"]
    active = state.count >= initial_steps
    ratio = _protocol.safe_ratio(losses, initial)
    r = jnp.maximum(_protocol.safe_ratio(ratio, jnp.mean(ratio)), 0.0)
    n = w * m
    target = jax.lax.stop_gradient(jnp.mean(n) * r ** jnp.asarray(alpha, dtype))
    d_w = jnp.sign(n - target) * m
    if parameterization == "softmax":
      grad = _protocol.softmax_vjp(param, k * d_w)
    elif parameterization == "exp":
      grad = d_w * w
    else:
      grad = d_w
    updates, opt_state = opt.update(grad.astype(dtype), state.opt_state, param)
    new_param = normalised(jnp.asarray(optax.apply_updates(param, updates)))
    keep = lambda new, old: jnp.where(active, new, old)
    return state._replace(
        param=keep(new_param, param).astype(dtype),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        initial_sum=initial_sum,
        weights=jnp.where(active, w, state.weights).astype(dtype),
    )

  def diagnostics_fn(state: GradNormState) -> dict[str, jax.Array]:
    return {"next_weight": weights_of(normalised(state.param))}

  return _protocol.LossWeighting(
      init_fn,
      update_fn,  # type: ignore[arg-type]
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
      statistics=spec,
  )
