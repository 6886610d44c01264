"""Rates of change of the loss components: finite-difference slopes."""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from softadapt_jax import _checks


@functools.cache
def _exact_forward_coefficients(order: int) -> tuple[Fraction, ...]:
  # The (p+1)-point forward stencil for f'(0) on the points 0..p solves
  # sum_j c_j j^m = [m == 1] for m = 0..p; its closed form is
  # c_j = (-1)^(j+1) C(p, j) / j for j >= 1 and c_0 = -(1 + 1/2 + ... + 1/p).
  coeffs = [Fraction(0)] * (order + 1)
  binom = 1
  for j in range(1, order + 1):
    binom = binom * (order - j + 1) // j
    coeffs[j] = Fraction((-1) ** (j + 1) * binom, j)
  coeffs[0] = -sum(coeffs[1:], Fraction(0))
  return tuple(coeffs)


def finite_difference_coefficients(
    order: int, stencil: str = "forward"
) -> np.ndarray:
  """The ``order + 1`` first-derivative coefficients, oldest point first.

  ``forward`` estimates the derivative at the oldest point of the window (the
  reference implementation's choice); ``backward`` at the newest point (the
  forward stencil reversed and negated). Coefficients are exact rationals
  rounded once to float64.

  Args:
    order: the accuracy order ``p >= 1``; the stencil has ``p + 1`` points.
    stencil: ``"forward"`` or ``"backward"``.

  Returns:
    A float64 numpy array ``c`` of shape ``[p + 1]`` with
    ``sum_j c_j j^m = [m == 1]`` for ``m = 0..p`` (forward).

  Example:
    >>> from softadapt_jax import finite_difference_coefficients
    >>> finite_difference_coefficients(2).tolist()
    [-1.5, 2.0, -0.5]
    >>> finite_difference_coefficients(2, "backward").tolist()
    [0.5, -2.0, 1.5]

  References:
    Fornberg, *Generation of finite difference formulas on arbitrarily spaced
    grids*, Math. Comp. 51 (1988).
  """
  order = _checks.check_int("order", order, minimum=1)
  _checks.check_choice("stencil", stencil, _checks.STENCILS)
  coeffs = np.array(
      [float(c) for c in _exact_forward_coefficients(order)], dtype=np.float64
  )
  if stencil == "backward":
    coeffs = -coeffs[::-1]
  return coeffs


def slopes(
    history: ArrayLike, order: int | None = None, *, stencil: str = "forward"
) -> jax.Array:
  r"""Finite-difference rate of change of each loss component.

  .. math::
    s_k = \sum_{j=0}^{p} c_j \, H_{n-p-1+j,\,k}

  with ``c`` the ``(p+1)``-point stencil of
  :func:`finite_difference_coefficients`; only the newest ``p + 1`` rows of the
  history are used. Computed as :math:`\sum_j c_j (H_j - H_0)` over the
  window (the same, as :math:`\sum_j c_j = 0`): a constant component has a
  slope of exactly 0 in any dtype, and every component is computed by the
  same operations. No loop over ``K``.

  Args:
    history: ``[n, K]`` loss values, rows are time steps (oldest first),
      columns are loss components.
    order: accuracy order ``p`` (static, ``1 <= p <= n - 1``); ``None`` uses
      the whole history (``p = n - 1``).
    stencil: ``"forward"`` (derivative at the oldest point of the window, as
      the reference implementation) or ``"backward"`` (at the newest point).

  Returns:
    The ``[K]`` slopes, in the history's dtype.

  Raises:
    ValueError: if ``history`` is not ``[n, K]`` with ``n >= 2``, or
      ``order >= n``.

  Example:
    >>> import jax.numpy as jnp
    >>> from softadapt_jax import slopes
    >>> h = jnp.array([[1.0, 150.0], [2.0, 100.0], [3.0, 50.0]])
    >>> slopes(h, order=1).tolist()
    [1.0, -50.0]
    >>> slopes(h).tolist()   # order None = 2: -1.5 h0 + 2 h1 - 0.5 h2
    [1.0, -50.0]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, section 3.1.
  """
  history = jnp.asarray(history)
  _checks.check_history(history)
  p = _checks.resolve_order(order, history.shape[0])
  coeffs = jnp.asarray(
      finite_difference_coefficients(p, stencil), dtype=history.dtype
  )
  window = history[-(p + 1):]
  # The stencil's weights sum to 0, so the same sum over the differences from
  # the window's first row: a constant component has a slope of exactly 0
  # (float32's rounded weights do not sum to 0 exactly, which gave a constant
  # column a slope of ~eps * L that the normalized variant then amplified),
  # and every component takes the same operations (a dot's accumulation order
  # may differ between columns).
  diffs = window - window[:1]
  return jnp.sum(coeffs[:, None] * diffs, axis=0)
