"""softadapt_jax: adaptive loss weighting for JAX and Optax, SoftAdapt and its family.

Data flows one way: observations (loss values) -> rule state -> weights ->
direction ``h = J^T w`` (one ``jax.vjp``).

- Rules, all :class:`LossWeighting` objects carrying every setting:
  :func:`softadapt` (also on log-losses), :func:`ratio_softadapt`,
  :func:`dwa`, :func:`relobralo`, :func:`random_weighting`,
  :func:`equal_weights`, :func:`fixed_weights`, and the combinator
  :func:`per_epoch`. Each is built from ``K`` or from the names of the losses.
- Routes, taking a rule and nothing else: :func:`weighted_value_and_grad`
  (one backward pass), :func:`track_weights` and :func:`combine_grads`
  (Optax), :func:`find_weighting_state`, :func:`diagnostics` (logging) and
  :func:`apply_gradients` (Flax Linen).
- The functional core of SoftAdapt (SPEC section 9): :func:`slopes`,
  :func:`weights_from_history`, :class:`SoftAdaptState`, :func:`init_state`,
  :func:`softadapt_weights`.
"""

from typing import Any

from softadapt_jax._aligned_mtl import (
    ALIGNED_MTL_CONVENTIONS,
    AlignedMTLState,
    aligned_mtl,
    aligned_mtl_weights,
)
from softadapt_jax._cagrad import (
    CAGRAD_CONVENTIONS,
    CAGradState,
    cagrad,
    cagrad_weights,
)
from softadapt_jax._config import ConFIGState, config_weights, conflict_free
from softadapt_jax._diagnostics import diagnostics
from softadapt_jax._dwa import DWAState, dwa
from softadapt_jax._famo import FAMO_CONVENTIONS, FAMOState, famo
from softadapt_jax._fixed import FixedWeightsState, equal_weights, fixed_weights
from softadapt_jax._grad_balance import (
  GRAD_BALANCE_CONVENTIONS,
  GradBalanceState,
  grad_balance,
)
from softadapt_jax._gradnorm import GRADNORM_CONVENTIONS, GradNormState, gradnorm
from softadapt_jax._imtl import IMTLState, imtl_g, imtl_g_weights
from softadapt_jax._linen import apply_gradients
from softadapt_jax._mgda import MGDA_CONVENTIONS, MGDAState, mgda, mgda_weights
from softadapt_jax._nash_mtl import (
    NASH_MTL_CONVENTIONS,
    NashMTLState,
    nash_mtl,
    nash_mtl_weights,
)
from softadapt_jax._pcgrad import (
    PCGRAD_CONVENTIONS,
    PCGradState,
    pcgrad,
    pcgrad_weights,
)
from softadapt_jax._per_epoch import PerEpochState, per_epoch
from softadapt_jax._protocol import LossWeighting
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
from softadapt_jax._routes import (
  WeightedGrad,
  combine_grads,
  find_weighting_state,
  observe_after_step,
  track_weights,
  weighted_value_and_grad,
)
from softadapt_jax._slopes import finite_difference_coefficients, slopes
from softadapt_jax._softadapt import (
  SoftAdaptState,
  init_state,
  softadapt,
  softadapt_weights,
)
from softadapt_jax._statistics import GradientStatistics
from softadapt_jax._uncertainty import (
  UNCERTAINTY_CONVENTIONS,
  UncertaintyState,
  uncertainty_weighting,
)
from softadapt_jax._upgrad import (
    DualProjState,
    UPGradState,
    dualproj,
    dualproj_weights,
    upgrad,
    upgrad_weights,
)
from softadapt_jax._weights import softmax_weights, weights_from_history

__version__ = "0.2.0"

__all__ = (
    "ALIGNED_MTL_CONVENTIONS",
    "CAGRAD_CONVENTIONS",
    "FAMO_CONVENTIONS",
    "GRADNORM_CONVENTIONS",
    "GRAD_BALANCE_CONVENTIONS",
    "MGDA_CONVENTIONS",
    "NASH_MTL_CONVENTIONS",
    "PCGRAD_CONVENTIONS",
    "RATIO_SOFTADAPT_CONVENTIONS",
    "RELOBRALO_CONVENTIONS",
    "UNCERTAINTY_CONVENTIONS",
    "AlignedMTLState",
    "CAGradState",
    "ConFIGState",
    "DWAState",
    "DualProjState",
    "FAMOState",
    "FixedWeightsState",
    "GradBalanceState",
    "GradNormState",
    "GradientStatistics",
    "IMTLState",
    "LossWeighting",
    "MGDAState",
    "NashMTLState",
    "PCGradState",
    "PerEpochState",
    "RandomWeightingState",
    "RatioSoftAdaptState",
    "ReLoBRaLoState",
    "SoftAdaptState",
    "UPGradState",
    "UncertaintyState",
    "WeightedGrad",
    "aligned_mtl",
    "aligned_mtl_weights",
    "apply_gradients",
    "cagrad",
    "cagrad_weights",
    "combine_grads",
    "config_weights",
    "conflict_free",
    "diagnostics",
    "dualproj",
    "dualproj_weights",
    "dwa",
    "equal_weights",
    "famo",
    "find_weighting_state",
    "finite_difference_coefficients",
    "fixed_weights",
    "grad_balance",
    "gradnorm",
    "imtl_g",
    "imtl_g_weights",
    "init_state",
    "mgda",
    "mgda_weights",
    "nash_mtl",
    "nash_mtl_weights",
    "observe_after_step",
    "pcgrad",
    "pcgrad_weights",
    "per_epoch",
    "random_weighting",
    "ratio_softadapt",
    "relobralo",
    "slopes",
    "softadapt",
    "softadapt_weights",
    "softmax_weights",
    "track_weights",
    "uncertainty_weighting",
    "upgrad",
    "upgrad_weights",
    "weighted_value_and_grad",
    "weights_from_history",
)

# Names removed in 0.2.0, each with what replaces it: the rule object is the
# one way into the Optax routes.
_REMOVED = {
    "softadapt_track": "sa.track_weights(sa.softadapt(K, ...))",
    "softadapt_combine_grads": "sa.combine_grads(sa.softadapt(K, ...))",
    "softadapt_value_and_grad": (
        "sa.weighted_value_and_grad(fun, sa.softadapt(K, ...)), and "
        "tx.update(..., weighting_state=out.state)"
    ),
    "find_softadapt_state": "sa.find_weighting_state(tree, rule)",
    "SoftAdaptGrad": "sa.WeightedGrad",
    "softadapt_diagnostics": "sa.diagnostics(tree, rule)",
    "SoftAdaptDiagnostics": "sa.diagnostics(tree, rule), a dict of arrays",
}


def __getattr__(name: str) -> Any:
  if name in _REMOVED:
    raise AttributeError(
        f"softadapt_jax.{name} was removed in 0.2.0: every setting now lives in "
        f"the rule object; use {_REMOVED[name]} instead."
    )
  raise AttributeError(f"module 'softadapt_jax' has no attribute {name!r}")
