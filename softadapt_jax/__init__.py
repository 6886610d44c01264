"""softadapt_jax: SoftAdapt adaptive loss weighting for JAX and Optax.

Data flows one way: losses -> history -> slopes -> weights -> direction.

- :func:`slopes`, :func:`weights_from_history`: the maths (SPEC sections 2-4).
- :class:`SoftAdaptState`, :func:`init_state`, :func:`softadapt_weights`: the
  jittable state machine (sections 5, 6, 8).
- :func:`softadapt_value_and_grad`: the direction from one ``jax.vjp``.
- :func:`softadapt_diagnostics`: per-step weights, slopes and losses to stack
  out of ``lax.scan``; :mod:`softadapt_jax.plotting` draws them.
- :func:`apply_gradients`: Flax Linen ``TrainState`` update forwarding
  ``losses=``.
- :func:`softadapt_track`, :func:`softadapt_combine_grads`: Optax
  transformations holding the state in ``opt_state``.

The loss-history family shares one protocol, :class:`LossWeighting`
(``init``, ``update(state, losses) -> (weights, state)``):
:func:`softadapt` (also on log-losses), :func:`ratio_softadapt`, :func:`dwa`,
:func:`relobralo` and :func:`random_weighting`; any rule plugs into
:func:`weighted_value_and_grad`, :func:`track_weights` and
:func:`combine_grads`.
"""

from softadapt_jax._dwa import DWAState, dwa
from softadapt_jax._gradients import (
    SoftAdaptGrad,
    WeightedGrad,
    find_softadapt_state,
    softadapt_value_and_grad,
    weighted_value_and_grad,
)
from softadapt_jax._linen import apply_gradients
from softadapt_jax._logging import SoftAdaptDiagnostics, softadapt_diagnostics
from softadapt_jax._protocol import LossWeighting, find_weighting_state
from softadapt_jax._random_weighting import RandomWeightingState, random_weighting
from softadapt_jax._ratio import (
    RATIO_SOFTADAPT_CONVENTIONS,
    RatioSoftAdaptState,
    ratio_softadapt,
)
from softadapt_jax._relobralo import (
    RELOBRALO_CONVENTIONS,
    ReLoBRaLoState,
    relobralo,
)
from softadapt_jax._slopes import finite_difference_coefficients, slopes
from softadapt_jax._state import (
    SoftAdaptState,
    init_state,
    softadapt,
    softadapt_weights,
)
from softadapt_jax._transforms import (
    combine_grads,
    softadapt_combine_grads,
    softadapt_track,
    track_weights,
)
from softadapt_jax._weights import softmax_weights, weights_from_history

__version__ = "0.1.0"

__all__ = (
    "RATIO_SOFTADAPT_CONVENTIONS",
    "RELOBRALO_CONVENTIONS",
    "DWAState",
    "LossWeighting",
    "RandomWeightingState",
    "RatioSoftAdaptState",
    "ReLoBRaLoState",
    "SoftAdaptDiagnostics",
    "SoftAdaptGrad",
    "SoftAdaptState",
    "WeightedGrad",
    "apply_gradients",
    "combine_grads",
    "dwa",
    "find_softadapt_state",
    "find_weighting_state",
    "finite_difference_coefficients",
    "init_state",
    "random_weighting",
    "ratio_softadapt",
    "relobralo",
    "slopes",
    "softadapt",
    "softadapt_combine_grads",
    "softadapt_diagnostics",
    "softadapt_track",
    "softadapt_value_and_grad",
    "softadapt_weights",
    "softmax_weights",
    "track_weights",
    "weighted_value_and_grad",
    "weights_from_history",
)
