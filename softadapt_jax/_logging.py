"""Per-step diagnostics of a SoftAdapt state, for logging from inside ``lax.scan``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from softadapt_jax import _checks
from softadapt_jax._gradients import find_softadapt_state
from softadapt_jax._slopes import slopes


class SoftAdaptDiagnostics(NamedTuple):
  """What :func:`softadapt_diagnostics` returns: arrays, ready to stack.

  Attributes:
    weights: ``[K]`` the weights the state holds (those of the last step).
    slopes: ``[K]`` the slopes of the loss history the state holds; ``NaN``
      while the history is not yet full (warm-up).
    losses: ``[K]`` the newest recorded loss vector (``NaN`` before the first).
    count: int32 scalar, finite loss vectors recorded so far.
    num_skipped: int32 scalar, non-finite loss vectors skipped so far.
  """

  weights: jax.Array
  slopes: jax.Array
  losses: jax.Array
  count: jax.Array
  num_skipped: jax.Array


def softadapt_diagnostics(
    state: Any, *, stencil: str = "forward", log_losses: bool = False
) -> SoftAdaptDiagnostics:
  r"""The weights, slopes and newest losses held by a SoftAdapt state.

  Pure JAX (no host callback): return it from the body of a ``lax.scan`` and
  every step's diagnostics come out stacked as ``[steps, K]`` arrays. The
  slopes are those of the state's whole history (``order + 1`` rows; of
  ``log H`` with ``log_losses``),

  .. math::
    s_k = \sum_{j=0}^{p} c_j \, H_{j,k},

  the vector the softmax acted on (before the ``normalized`` variant's
  division) on a step that recomputed the weights. They are ``NaN`` during
  warm-up, when the history still holds fewer than ``order + 1`` recorded
  loss vectors and the weights are the initial ones.

  Args:
    state: a :class:`SoftAdaptState`, or any pytree holding exactly one (an
      ``opt_state`` with :func:`softadapt_track` in its chain).
    stencil: ``"forward"`` (the default, as :func:`softadapt_weights`) or
      ``"backward"``: use the same value as the weights.
    log_losses: slopes of ``log H`` (for a rule built with
      ``log_losses=True``); the ``losses`` field stays the raw losses.

  Returns:
    A :class:`SoftAdaptDiagnostics` of arrays.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> def body(state, losses):
    ...   _, state = sa.softadapt_weights(state, losses, beta=1.0)
    ...   return state, sa.softadapt_diagnostics(state)
    >>> losses = jnp.array([[4.0, 1.0], [3.0, 1.5], [1.0, 1.5]])
    >>> _, log = jax.lax.scan(body, sa.init_state(2, order=1), losses)
    >>> log.slopes.tolist()   # warm-up first: NaN
    [[nan, nan], [-1.0, 0.5], [-2.0, 0.0]]
    >>> log.count.tolist()
    [1, 2, 3]
  """
  _checks.check_choice("stencil", stencil, _checks.STENCILS)
  state = find_softadapt_state(state)
  num_rows = state.history.shape[0]
  full = state.count >= num_rows
  history = state.history
  if log_losses:
    history = jnp.log(jnp.maximum(history, jnp.finfo(history.dtype).tiny))
  s = slopes(history, stencil=stencil)
  newest = state.history[-1]
  return SoftAdaptDiagnostics(
      weights=state.weights,
      slopes=jnp.where(full, s, jnp.nan),
      losses=jnp.where(state.count > 0, newest, jnp.nan),
      count=state.count,
      num_skipped=state.num_skipped,
  )
