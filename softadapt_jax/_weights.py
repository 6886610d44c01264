"""SoftAdapt weights from a loss history: the three variants, in log space."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._slopes import slopes as _slopes

# Below this relative size of |sum s| against sum |s|, the signed
# normalisation of the `normalized` variant is ill-conditioned and the weights
# fall back to those of the `original` variant (SPEC section 4).
_NORMALIZED_FALLBACK_RTOL = 1e-6


def softmax_weights(
    z: jax.Array,
    beta: ArrayLike,
    log_numerator: jax.Array | None = None,
    epsilon: ArrayLike = 1e-8,
) -> jax.Array:
  r"""SoftAdapt's modified softmax, computed in log space.

  .. math::
    u_k = \beta z_k + \log w_k, \qquad
    \alpha_k = \frac{e^{u_k - \max_l u_l}}{\sum_l e^{u_l - \max_l u_l}
      + \epsilon}

  This equals the reference's
  ``w_k e^{beta (z_k - max z)} / (sum_l w_l e^{beta (z_l - max z)} + eps)`` up
  to ``eps`` relative, but the denominator is ``>= 1``: ``epsilon`` never
  dominates, and any finite ``beta`` (negative too) gives finite weights.

  Args:
    z: ``[K]`` the vector the softmax acts on.
    beta: scalar temperature (traceable).
    log_numerator: optional ``[K]`` ``log w`` (``-inf``, or any value below
      ``-finfo.max / 4``, for a zero weight);
      ``None`` means ``w = 1``.
    epsilon: added to the denominator, as the reference does.

  Returns:
    ``[K]`` nonnegative weights summing to ``1 - O(epsilon)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from softadapt_jax import softmax_weights
    >>> w = softmax_weights(jnp.array([0.0, 0.0]), beta=1.0)
    >>> [round(float(x), 6) for x in w]
    [0.5, 0.5]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, eq. (4)-(6).
  """
  dtype = z.dtype
  beta = jnp.asarray(beta, dtype)
  # |beta * z| and |log w| stay within a quarter of the range, so no sum or
  # difference below overflows: no internal inf, whatever beta and z.
  big = jnp.finfo(dtype).max / 4
  limit = big / jnp.maximum(jnp.abs(beta), 1)
  z = jnp.clip(_protocol.bounded(z), -limit, limit)
  if log_numerator is None:
    e = _protocol.exp_shifted(z, beta)
  else:
    # Zero weights (log w <= -big) are exactly 0, whatever beta * z.
    live = log_numerator > -big
    log_w = jnp.clip(log_numerator, -big / 2, big / 2)
    e = _protocol.exp_shifted(z, beta, log_w, live)
  return e / (jnp.sum(e) + jnp.asarray(epsilon, dtype))


def weights_from_history(
    history: ArrayLike,
    *,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    order: int | None = None,
    epsilon: ArrayLike = 1e-8,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
    log_losses: bool = False,
) -> jax.Array:
  r"""SoftAdapt weights of the ``K`` loss components from their history.

  With slopes ``s`` (:func:`slopes`), the weights are
  ``alpha = softmax_weights(beta * z + log w)`` with

  ============== ======================================= ==================
  variant        z                                       w
  ============== ======================================= ==================
  original       ``s``                                   1
  normalized     ``s / sum_l s_l`` (signed, reference)   1
  loss_weighted  ``s``                                   ``max(mean_t H[t, k], 0)``
  ============== ======================================= ==================

  ``beta > 0`` favours the components whose loss falls slowest (or grows);
  ``beta < 0`` those that fall fastest; ``beta = 0`` is uniform for
  ``original`` and ``normalized``.

  The ``normalized`` variant divides by the **signed** sum of the slopes, as
  the reference does. When every loss falls, that sum is negative and the
  division flips the ranking: the fastest-falling loss then gets the largest
  weight, the opposite of the method's intent. ``normalization="l1"`` divides
  by ``sum_l |s_l| + epsilon`` instead (the authors' 2019 code), which keeps
  the ranking. Where ``|sum s| < 1e-6 sum |s|`` (or every slope is 0), the
  signed division is ill-conditioned and the ``original`` weights are used.

  ``loss_weighted`` multiplies each term by the mean of its column over all the
  rows given; a negative mean (e.g. a log-likelihood term) is clamped to 0, so
  the weights stay a convex combination. If every mean is ``<= 0`` the
  ``original`` weights are used.

  Args:
    history: ``[n, K]`` loss values, rows are time steps (oldest first).
    beta: the temperature (a traced scalar: jit/vmap over it does not
      recompile).
    variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"`` (static).
    order: the finite-difference accuracy order (static); ``None`` uses the
      whole history.
    epsilon: added to the softmax denominator (the reference's Keras port uses
      ``1e-7``, the authors' PyTorch code ``1e-8``).
    normalization: ``"signed"`` (reference) or ``"l1"``; only for
      ``variant="normalized"``.
    stencil: ``"forward"`` (reference) or ``"backward"``, see :func:`slopes`.
    scale_by_num_losses: if true, the weights sum to ``K`` instead of 1 (so a
      weighted sum keeps the scale of the plain sum).
    log_losses: if true, the slopes are taken of ``log H`` (the relative rate
      of change, so one ``beta`` suits every loss scale); the history must
      then be positive. ``loss_weighted`` still weights by the mean of ``H``.

  Returns:
    ``[K]`` nonnegative weights summing to 1 (or ``K``) within ``1e-6``, in the
    history's dtype promoted to at least float32.

  Raises:
    ValueError: on a malformed history, an unknown variant, normalization or
      stencil, an order that needs more rows than given, or a non-scalar beta.

  Example:
    >>> import jax.numpy as jnp
    >>> from softadapt_jax import weights_from_history
    >>> h = jnp.array([[1., 150., 1500.], [2., 100., 1000.], [3., 50., 500.],
    ...                [4., 10., 100.], [5., .1, 1.]])
    >>> w = weights_from_history(h, beta=0.1, variant="original")
    >>> [round(float(x), 4) for x in w]
    [0.9934, 0.0066, 0.0]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt: Techniques for Adaptive Loss
    Weighting of Neural Networks with Multi-Part Loss Functions*,
    arXiv:1912.12355, section 3.1.
  """
  history = jnp.asarray(history)
  _checks.check_history(history)
  _checks.check_choice("variant", variant, _checks.VARIANTS)
  _checks.check_choice("normalization", normalization, _checks.NORMALIZATIONS)
  _checks.check_float("beta", beta)
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  # Low-precision histories are weighted in float32 (the exponents need it).
  dtype = jnp.promote_types(history.dtype, jnp.float32)
  history = history.astype(dtype)
  epsilon = jnp.asarray(epsilon, dtype)

  if log_losses:
    tiny = jnp.finfo(dtype).tiny
    s = _slopes(jnp.log(jnp.maximum(history, tiny)), order, stencil=stencil)
  else:
    s = _slopes(history, order, stencil=stencil)
  if variant == "original":
    alpha = softmax_weights(s, beta, None, epsilon)
  elif variant == "normalized":
    alpha = _normalized_weights(s, beta, epsilon, normalization)
  else:
    alpha = _loss_weighted_weights(s, history, beta, epsilon)
  if scale_by_num_losses:
    alpha = alpha * history.shape[1]
  return alpha


def _normalized_weights(
    s: jax.Array, beta: ArrayLike, epsilon: jax.Array, normalization: str
) -> jax.Array:
  abs_total = jnp.sum(jnp.abs(s))
  if normalization == "l1":
    return softmax_weights(s / (abs_total + epsilon), beta, None, epsilon)
  total = jnp.sum(s)
  well_conditioned = (jnp.abs(total) >= _NORMALIZED_FALLBACK_RTOL * abs_total) & (
      abs_total > 0
  )
  safe_total = jnp.where(well_conditioned, total, 1.0)
  z = jnp.where(well_conditioned, s / safe_total, s)
  return softmax_weights(z, beta, None, epsilon)


def _loss_weighted_weights(
    s: jax.Array, history: jax.Array, beta: ArrayLike, epsilon: jax.Array
) -> jax.Array:
  n = history.shape[0]
  # Mean of each column; summing pre-divided values avoids overflow at 1e38.
  mean_loss = jnp.sum(history / n, axis=0)
  positive = mean_loss > 0
  any_positive = jnp.any(positive)
  zero_weight = -jnp.finfo(history.dtype).max  # log 0, without an inf
  log_w = jnp.where(
      positive, jnp.log(jnp.where(positive, mean_loss, 1.0)), zero_weight
  )
  # If no mean is positive, fall back to w = 1 (the original variant).
  log_w = jnp.where(any_positive, log_w, 0.0)
  return softmax_weights(s, beta, log_w, epsilon)
