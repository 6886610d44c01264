"""softadapt_jax: SoftAdapt adaptive loss weighting for JAX and Optax.

Data flows one way: losses -> history -> slopes -> weights -> direction.

- :func:`slopes`, :func:`weights_from_history`: the maths (SPEC sections 2-4).
- :class:`SoftAdaptState`, :func:`init_state`, :func:`softadapt_weights`: the
  jittable state machine (sections 5, 6, 8).
- :func:`softadapt_value_and_grad`: the direction from one ``jax.vjp``.
- :func:`softadapt_track`, :func:`softadapt_combine_grads`: Optax
  transformations holding the state in ``opt_state``.
"""

from softadapt_jax._gradients import (
    SoftAdaptGrad,
    find_softadapt_state,
    softadapt_value_and_grad,
)
from softadapt_jax._slopes import finite_difference_coefficients, slopes
from softadapt_jax._state import SoftAdaptState, init_state, softadapt_weights
from softadapt_jax._transforms import softadapt_combine_grads, softadapt_track
from softadapt_jax._weights import softmax_weights, weights_from_history

__version__ = "0.1.0"

__all__ = (
    "SoftAdaptGrad",
    "SoftAdaptState",
    "find_softadapt_state",
    "finite_difference_coefficients",
    "init_state",
    "slopes",
    "softadapt_combine_grads",
    "softadapt_track",
    "softadapt_value_and_grad",
    "softadapt_weights",
    "softmax_weights",
    "weights_from_history",
)
