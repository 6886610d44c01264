"""Ratio SoftAdapt: the softmax of each loss over its previous value."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._structure import LossSpec, LossStructure

LOOKBACKS = ("previous", "last_update")

class RatioSoftAdaptConvention(TypedDict):
  """The settings of :func:`ratio_softadapt` that reproduce one peer."""

  temperature: float
  epsilon: float
  scale_by_num_losses: bool
  lookback: str


# The settings that reproduce each peer's "SoftAdapt" (see docs/family.md):
# ``ratio_softadapt(K, **RATIO_SOFTADAPT_CONVENTIONS["jinns"])`` type-checks.
RATIO_SOFTADAPT_CONVENTIONS: Mapping[str, RatioSoftAdaptConvention] = (
    types.MappingProxyType({
        # physicsnemo/sym/loss/aggregator.py, class SoftAdapt.
        "physicsnemo": RatioSoftAdaptConvention(
            temperature=1.0,
            epsilon=1e-8,
            scale_by_num_losses=True,
            lookback="previous",
        ),
        # NeuralPDE.jl 6.x, src/adaptive_losses.jl, SoftAdaptAdaptiveLoss
        # (alpha = 0.1 multiplies the relative change, so T = 1 / alpha; the
        # reference losses are refreshed only at reweight steps).
        "neuralpde": RatioSoftAdaptConvention(
            temperature=10.0,
            epsilon=1e-8,
            scale_by_num_losses=True,
            lookback="last_update",
        ),
        # jinns/loss/_loss_weight_updates.py, soft_adapt.
        "jinns": RatioSoftAdaptConvention(
            temperature=1.0,
            epsilon=1e-6,
            scale_by_num_losses=False,
            lookback="previous",
        ),
        # jno/utils/adaptive/weights.py: K * softmax((L / L_prev) / beta).
        "jno": RatioSoftAdaptConvention(
            temperature=0.1,
            epsilon=0.0,
            scale_by_num_losses=True,
            lookback="previous",
        ),
    })
)


class RatioSoftAdaptState(NamedTuple):
  """State of :func:`ratio_softadapt`.

  Attributes:
    count: int32 scalar, number of loss vectors recorded (saturating).
    reference: ``[K]`` the losses the next ratio divides by (the previous
      recorded vector, or the one of the last update with
      ``lookback="last_update"``).
    weights: ``[K]`` the weights last returned.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  reference: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def ratio_softadapt(
    num_losses: LossSpec,
    *,
    temperature: ArrayLike = 10.0,
    epsilon: ArrayLike = 1e-8,
    scale_by_num_losses: bool = True,
    lookback: str = "previous",
    update_every: int = 1,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Ratio SoftAdapt, the "SoftAdapt" of PhysicsNeMo, NeuralPDE.jl, jinns, jNO.

  .. math::
    r_k = \frac{L_k(t)}{L_k(t') + \epsilon}, \qquad
    \lambda = S \cdot \mathrm{softmax}(r / T)

  with ``t'`` the previous recorded step (or the last update step), and
  ``S = K`` or 1. Ratios are scale-free, unlike the paper's slopes. The first
  recorded vector only sets the reference: its weights are ``S / K`` each (a
  plain sum when ``S = K``). A reference of exactly 0 (possible with
  ``epsilon=0``) gives a component that grows from 0 all the weight, and
  ``0 / 0`` a ratio of 0: no inf is formed. ``RATIO_SOFTADAPT_CONVENTIONS[peer]``
  holds the settings that reproduce each peer: ``ratio_softadapt(K,
  **RATIO_SOFTADAPT_CONVENTIONS["jinns"])``. A traced temperature is clamped
  at the smallest normal float.

  The default temperature is NeuralPDE.jl's ``T = 10`` (with the other
  defaults, NeuralPDE.jl's convention at ``update_every=1``). PhysicsNeMo's and
  jinns' ``T = 1`` was the default until the converged studies: on the
  published Poisson ``sin(8 pi x)`` PINN it failed 6 of 20 seeds, 3 of them
  seeds where equal weights ended at 0.05-0.38, against 4 for ``T = 10`` and 3
  for equal weights. No temperature beat equal weights' median on the
  studies' PINNs or their multi-task digits (``docs/studies.md``).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    temperature: ``T > 0`` (traced); a larger ``T`` keeps the weights nearer
      equal.
    epsilon: added to the reference losses, ``>= 0``.
    scale_by_num_losses: weights sum to ``K`` (default, as PhysicsNeMo) or 1.
    lookback: ``"previous"`` (divide by the previous recorded losses) or
      ``"last_update"`` (by those of the last step that updated the weights,
      as NeuralPDE.jl); the same when ``update_every=1``.
    update_every: recompute the weights every this many recorded vectors
      (static), holding them in between.
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`RatioSoftAdaptState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.ratio_softadapt(2, epsilon=0.0)
    >>> state = rule.init()
    >>> _, state = rule.update(state, jnp.array([1.0, 4.0]))
    >>> w, state = rule.update(state, jnp.array([1.0, 2.0]))  # r = (1, 0.5)
    >>> [round(x, 4) for x in w.tolist()]   # 2 * softmax(r / 10)
    [1.025, 0.975]

  References:
    NVIDIA PhysicsNeMo-Sym, "Advanced schemes: SoftAdapt"; Heydari et al.,
    arXiv:1912.12355.
  """
  k = LossStructure(num_losses).num_losses
  update_every = _checks.check_int("update_every", update_every, minimum=1)
  _checks.check_choice("lookback", lookback, LOOKBACKS)
  _checks.check_float("temperature", temperature, positive=True)
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  total = _protocol.total_weight(k, scale_by_num_losses)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> RatioSoftAdaptState:
    del key  # deterministic
    return RatioSoftAdaptState(
        count=jnp.zeros((), jnp.int32),
        reference=jnp.ones((k,), dtype),
        weights=_protocol.uniform_weights(k, total, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: RatioSoftAdaptState, losses: jax.Array
  ) -> RatioSoftAdaptState:
    dtype = state.weights.dtype
    ratio = _protocol.safe_ratio(
        losses, state.reference + jnp.asarray(epsilon, dtype)
    )
    candidate = _protocol.scaled_softmax(ratio, temperature, total)
    due = (state.count >= 2) & ((state.count - 1) % update_every == 0)
    refresh = (
        (state.count == 1) | due if lookback == "last_update" else jnp.bool_(True)
    )
    return state._replace(
        reference=jnp.where(refresh, losses, state.reference),
        weights=jnp.where(due, candidate, state.weights),
    )

  def diagnostics_fn(state: RatioSoftAdaptState) -> dict[str, jax.Array]:
    return {"reference": state.reference}

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )

