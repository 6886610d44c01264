"""Bad settings and misuse: a clear error at construction or trace time.

Every error names the argument, the value given and what was expected.
Traced values are not checked (each rule's docstring says how it clamps them):
the last tests show that a rule built with traced settings runs.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

HISTORY = jnp.ones((4, 3))
STATE = sa.init_state(3, order=2)
LOSSES = jnp.ones(3)

# `cast(Any, x)` marks an argument that is ill-typed on purpose: the run-time
# check it meets is what the test is about.


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        # history: shape, rows, dtype
        (lambda: sa.slopes(jnp.ones(5)), ValueError,
         r"`history` must be a 2-d array of shape \[n, K\].*got shape \(5,\)"),
        (lambda: sa.slopes(jnp.ones((1, 3))), ValueError,
         r"`history` must hold at least 2 rows.*\(1, 3\)"),
        (lambda: sa.slopes(jnp.ones((3, 2), jnp.int32)), TypeError,
         r"`history` must have a real floating dtype.*int32"),
        # order: an int in [1, 10], fewer than the rows of history
        (lambda: sa.slopes(HISTORY, 0), ValueError,
         r"`order` must be an int >= 1, got 0"),
        (lambda: sa.slopes(HISTORY, 4), ValueError,
         r"`order`=4 needs 5 rows of history, but the history has 4 rows"),
        (lambda: sa.slopes(HISTORY, cast(Any, 1.5)), TypeError,
         r"`order` must be a Python int >= 1.*1\.5 of type float"),
        (lambda: sa.slopes(HISTORY, True), TypeError,
         r"`order` must be a Python int.*True of type bool"),
        (lambda: sa.slopes(jnp.ones((20, 2)), 11), ValueError,
         r"`order` must be <= 10, got 11.*95x at p = 10"),
        (lambda: sa.slopes(jnp.ones((20, 2))), ValueError,
         r"`order`=None uses the whole history, order 19.*maximum 10"),
        (lambda: sa.softadapt(2, order=15), ValueError,
         r"`order` must be <= 10, got 15"),
        (lambda: sa.init_state(2, order=11), ValueError,
         r"`order` must be <= 10"),
        (lambda: sa.finite_difference_coefficients(2, "central"), ValueError,
         r"`stencil` must be one of 'forward', 'backward'; got 'central'"),
        # variant, normalization, beta, epsilon
        (lambda: sa.weights_from_history(HISTORY, variant="softmax"), ValueError,
         r"`variant` must be one of 'original', 'normalized', "
         r"'loss_weighted'; got 'softmax'"),
        (lambda: sa.weights_from_history(HISTORY, normalization="l2"),
         ValueError, r"`normalization` must be one of 'signed', 'l1'; got 'l2'"),
        (lambda: sa.weights_from_history(HISTORY, beta=jnp.ones(2)), ValueError,
         r"`beta` must be a scalar.*got shape \(2,\).*jax\.vmap"),
        (lambda: sa.weights_from_history(HISTORY, epsilon=jnp.ones(3)),
         ValueError, r"`epsilon` must be a scalar"),
        (lambda: sa.softadapt(2, beta=cast(Any, None)), TypeError,
         r"`beta` must be a finite float, got None"),
        (lambda: sa.softadapt(2, beta=float("nan")), ValueError,
         r"`beta` must be a float that is finite; got nan"),
        (lambda: sa.softadapt(2, beta=np.inf), ValueError,
         r"`beta` must be a float that is finite; got inf"),
        (lambda: sa.softadapt(2, beta=cast(Any, "0.1")), TypeError, r"`beta`"),
        (lambda: sa.softadapt(2, epsilon=-1e-8), ValueError,
         r"`epsilon` must be a float that is finite and >= 0.0; got -1e-08"),
        (lambda: sa.weights_from_history(HISTORY, epsilon=float("nan")),
         ValueError, r"`epsilon` must be a float that is finite"),
        (lambda: sa.softadapt(2, variant="x"), ValueError, r"`variant`"),
        (lambda: sa.softadapt(2, stencil="x"), ValueError, r"`stencil`"),
        (lambda: sa.softadapt(2, update_every=0), ValueError,
         r"`update_every` must be an int >= 1, got 0"),
        (lambda: sa.softadapt(2, update_every=cast(Any, 1.0)), TypeError,
         r"`update_every` must be a Python int"),
        # initial weights: [K], finite, >= 0, summing as configured
        (lambda: sa.softadapt(3, initial_weights=np.array([0.5, 0.5])), ValueError,
         r"`initial_weights` must have shape \(3,\).*got shape \(2,\)"),
        (lambda: sa.softadapt(2, initial_weights=np.array([np.nan, 1.0])), ValueError,
         r"`initial_weights` must be finite and >= 0, got \[nan, 1\.0\]"),
        (lambda: sa.softadapt(2, initial_weights=np.array([-0.5, 1.5])), ValueError,
         r"`initial_weights` must be finite and >= 0"),
        (lambda: sa.softadapt(2, initial_weights=np.array([1.0, 1.0])), ValueError,
         r"`initial_weights` must sum to 1.*summing to 2"),
        (lambda: sa.softadapt(
            2, initial_weights=np.array([0.5, 0.5]), scale_by_num_losses=True),
         ValueError, r"`initial_weights` must sum to 2"),
        (lambda: sa.init_state(3, initial_weights=np.array([1.0, 2.0, 3.0])),
         ValueError, r"`initial_weights` must sum to 1"),
        # init_state
        (lambda: sa.init_state(0), ValueError,
         r"`num_losses` must be an int >= 1, got 0"),
        (lambda: sa.init_state(cast(Any, 3.0)), TypeError,
         r"`num_losses` must be a Python int >= 1.*3\.0 of type float"),
        (lambda: sa.init_state(3, dtype=jnp.int32), TypeError,
         r"`dtype` must be a floating dtype"),
        # loss names
        (lambda: sa.softadapt("residual"), TypeError,
         r"`num_losses` must be an int K, a sequence of loss names"),
        (lambda: sa.softadapt([]), TypeError, r"non-empty sequence"),
        (lambda: sa.softadapt(["a", "a"]), ValueError,
         r"names must be unique, got \('a', 'a'\)"),
        (lambda: sa.softadapt(["a", 1]), TypeError, r"strings, got \['a', 1\]"),
        (lambda: sa.relobralo({"a": 1.0}), TypeError, r"`num_losses`"),
        # ReLoBRaLo: alpha and expected_rho in [0, 1], temperature > 0
        (lambda: sa.relobralo(2, alpha=1.5), ValueError,
         r"`alpha` must be a float that is finite and >= 0.0 and <= 1.0; "
         r"got 1\.5"),
        (lambda: sa.relobralo(2, expected_rho=-0.1), ValueError,
         r"`expected_rho` must be a float that is finite and >= 0.0"),
        (lambda: sa.relobralo(2, temperature=0.0), ValueError,
         r"`temperature` must be a float that is finite and > 0; got 0\.0"),
        (lambda: sa.relobralo(2, temperature=jnp.ones(2)), ValueError,
         r"`temperature` must be a scalar"),
        (lambda: sa.relobralo(2, seed=-1), ValueError, r"`seed` must be"),
        # ratio SoftAdapt, DWA: temperature > 0, epsilon >= 0
        (lambda: sa.ratio_softadapt(2, temperature=-1.0), ValueError,
         r"`temperature` must be a float that is finite and > 0; got -1\.0"),
        (lambda: sa.ratio_softadapt(2, epsilon=float("inf")), ValueError,
         r"`epsilon` must be a float that is finite"),
        (lambda: sa.ratio_softadapt(2, lookback="sometimes"), ValueError,
         r"`lookback` must be one of 'previous', 'last_update'"),
        (lambda: sa.dwa(2, temperature=0.0), ValueError, r"`temperature`"),
        (lambda: sa.dwa(2, steps_per_epoch=cast(Any, 2.5)), TypeError,
         r"`steps_per_epoch` must be a Python int"),
        # fixed weights, per_epoch
        (lambda: sa.fixed_weights([1.0, -1.0]), ValueError,
         r"`weights` must be finite and >= 0, got \[1\.0, -1\.0\]"),
        (lambda: sa.fixed_weights({"a": 1.0, "b": np.nan}), ValueError,
         r"`weights\['b'\]` must be a float that is finite"),
        (lambda: sa.fixed_weights(jnp.ones((2, 2))), ValueError,
         r"`weights` must be a \[K\] vector"),
        (lambda: sa.per_epoch(cast(Any, optax.sgd(0.1)), 2), TypeError,
         r"`rule` must be a LossWeighting"),
        (lambda: sa.per_epoch(sa.dwa(2), 0), ValueError,
         r"`steps_per_epoch` must be an int >= 1, got 0"),
        # softadapt_weights
        (lambda: sa.softadapt_weights(STATE, jnp.ones(4)), ValueError,
         r"`losses` must have shape \(3,\).*num_losses=3, got shape \(4,\)"),
        (lambda: sa.softadapt_weights(STATE, jnp.ones((1, 3))), ValueError,
         r"`losses` must have shape \(3,\).*got shape \(1, 3\)"),
        (lambda: sa.softadapt_weights(STATE, jnp.ones(3, jnp.int32)), TypeError,
         r"`losses` must have a real floating dtype.*int32"),
        (lambda: sa.softadapt_weights(STATE, LOSSES, update_every=0),
         ValueError, r"`update_every` must be an int >= 1, got 0"),
        (lambda: sa.softadapt_weights(cast(Any, (1, 2, 3, 4)), LOSSES), TypeError,
         r"`state` must be a SoftAdaptState.*got tuple"),
        # routes
        (lambda: sa.track_weights(cast(Any, sa.softadapt)), TypeError,
         r"`rule` must be a LossWeighting.*got function"),
        (lambda: sa.weighted_value_and_grad(jnp.sum, cast(Any, 3)), TypeError,
         r"`rule` must be a LossWeighting.*got int"),
    ],
)
def test_misuse_is_reported(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_errors_are_raised_at_trace_time_under_jit():
  step = jax.jit(functools.partial(sa.softadapt_weights, variant="normalized"))
  with pytest.raises(ValueError, match=r"`losses` must have shape \(3,\)"):
    step(STATE, jnp.ones(2))
  rule = sa.softadapt(["a", "b"])
  with pytest.raises(ValueError, match=r"named losses \['a', 'b'\]"):
    jax.jit(rule.update)(rule.init(), {"a": 1.0, "c": 2.0})


def test_a_state_of_another_order_is_refused():
  rule = sa.softadapt(2, order=2)
  with pytest.raises(ValueError, match=r"`state.history` has 2 rows.*order=2"):
    rule.update(sa.init_state(2, order=1), jnp.ones(2))


def test_find_weighting_state_errors():
  rule = sa.softadapt(2)
  with pytest.raises(ValueError, match=r"no SoftAdaptState found"):
    sa.find_weighting_state(optax.adam(1.0).init(jnp.zeros(2)), rule)
  two = optax.chain(sa.track_weights(rule), sa.track_weights(rule))
  with pytest.raises(ValueError, match=r"more than one SoftAdaptState"):
    sa.find_weighting_state(two.init(jnp.zeros(2)), rule)


@pytest.mark.parametrize(
    ("name", "replacement"),
    [
        ("softadapt_track", "track_weights"),
        ("softadapt_combine_grads", "combine_grads"),
        ("softadapt_value_and_grad", "weighted_value_and_grad"),
        ("find_softadapt_state", "find_weighting_state"),
        ("SoftAdaptGrad", "WeightedGrad"),
        ("softadapt_diagnostics", "diagnostics"),
        ("SoftAdaptDiagnostics", "diagnostics"),
    ],
)
def test_removed_names_raise_with_their_replacement(name, replacement):
  with pytest.raises(AttributeError, match=rf"{name} was removed.*{replacement}"):
    getattr(sa, name)
  assert not hasattr(sa, name)
  assert name not in sa.__all__
  with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
    sa.no_such_name  # noqa: B018


def test_traced_settings_are_not_checked_but_run():
  """Inside jit/vmap the values are unknown: no error, weights stay valid."""

  @jax.jit
  def run(beta, temperature, alpha, weights):
    losses = jnp.array([[3.0, 1.0], [2.0, 1.5], [1.0, 1.6]])
    out = []
    for rule in (
        sa.softadapt(2, beta=beta),
        sa.relobralo(2, temperature=temperature, alpha=alpha, expected_rho=alpha),
        sa.ratio_softadapt(2, temperature=temperature),
        sa.dwa(2, temperature=temperature),
        sa.fixed_weights(weights),
    ):
      state, w = rule.init(), None
      for loss in losses:
        w, state = rule.update(state, loss)
      out.append(w)
    return out

  # Out of range on purpose: a negative temperature is clamped at the
  # smallest normal float, alpha and expected_rho are clipped to [0, 1].
  out = run(jnp.float32(1.0), jnp.float32(-1.0), jnp.float32(2.0), jnp.ones(2))
  for w in out:
    assert np.all(np.isfinite(np.asarray(w)))
    assert np.all(np.asarray(w) >= 0)
