"""Static misuse raises at construction or trace time, naming the argument."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

import softadapt_jax as sa

HISTORY = jnp.ones((4, 3))
STATE = sa.init_state(3, order=2)
LOSSES = jnp.ones(3)


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
        # order
        (lambda: sa.slopes(HISTORY, 0), ValueError,
         r"`order` must be an int >= 1, got 0"),
        (lambda: sa.slopes(HISTORY, 4), ValueError,
         r"`order`=4 needs 5 rows of history, but the history has 4 rows"),
        (lambda: sa.slopes(HISTORY, 1.5), TypeError,
         r"`order` must be a Python int >= 1.*1\.5 of type float"),
        (lambda: sa.slopes(HISTORY, True), TypeError,
         r"`order` must be a Python int.*True of type bool"),
        (lambda: sa.slopes(HISTORY, jnp.int32(1) + 0.5), TypeError,
         r"`order` must be a Python int"),
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
        # init_state
        (lambda: sa.init_state(0), ValueError,
         r"`num_losses` must be an int >= 1, got 0"),
        (lambda: sa.init_state(3.0), TypeError,
         r"`num_losses` must be a Python int >= 1.*3\.0 of type float"),
        (lambda: sa.init_state(3, order=0), ValueError,
         r"`order` must be an int >= 1, got 0"),
        (lambda: sa.init_state(3, dtype=jnp.int32), TypeError,
         r"`dtype` must be a floating dtype"),
        (lambda: sa.init_state(3, initial_weights=[0.5, 0.5]), ValueError,
         r"`initial_weights` must have shape \(3,\).*got shape \(2,\)"),
        # softadapt_weights
        (lambda: sa.softadapt_weights(STATE, jnp.ones(4)), ValueError,
         r"`losses` must have shape \(3,\).*num_losses=3, got shape \(4,\)"),
        (lambda: sa.softadapt_weights(STATE, jnp.ones((1, 3))), ValueError,
         r"`losses` must have shape \(3,\).*got shape \(1, 3\)"),
        (lambda: sa.softadapt_weights(STATE, jnp.ones(3, jnp.int32)), TypeError,
         r"`losses` must have a real floating dtype.*int32"),
        (lambda: sa.softadapt_weights(STATE, LOSSES, update_every=0),
         ValueError, r"`update_every` must be an int >= 1, got 0"),
        (lambda: sa.softadapt_weights(STATE, LOSSES, variant="x"), ValueError,
         r"`variant` must be one of"),
        (lambda: sa.softadapt_weights((1, 2, 3, 4), LOSSES), TypeError,
         r"`state` must be a SoftAdaptState.*got tuple"),
        # Optax factories fail at construction
        (lambda: sa.softadapt_track(0), ValueError, r"`num_losses`"),
        (lambda: sa.softadapt_track(3, variant="v"), ValueError, r"`variant`"),
        (lambda: sa.softadapt_combine_grads(3, order=0), ValueError,
         r"`order` must be an int >= 1"),
        (lambda: sa.softadapt_combine_grads(3, update_every=1.0), TypeError,
         r"`update_every` must be a Python int"),
        (lambda: sa.softadapt_track(3, stencil="x"), ValueError, r"`stencil`"),
        (lambda: sa.softadapt_track(3, beta=jnp.ones(3)), ValueError,
         r"`beta` must be a scalar"),
    ],
)
def test_static_misuse_is_reported(call, error, match):
  with pytest.raises(error, match=match):
    call()


def test_errors_are_raised_at_trace_time_under_jit():
  step = jax.jit(functools.partial(sa.softadapt_weights, variant="normalized"))
  with pytest.raises(ValueError, match=r"`losses` must have shape \(3,\)"):
    step(STATE, jnp.ones(2))


def test_inject_hyperparams_without_static_ints_says_what_to_do():
  tx = optax.inject_hyperparams(sa.softadapt_combine_grads)(3, beta=0.1)
  state = tx.init(jnp.zeros(2))
  update = jax.jit(lambda g, s, loss: tx.update(g, s, losses=loss))
  with pytest.raises(TypeError, match=r"`num_losses`.*static_args"):
    update(jnp.ones((3, 2)), state, jnp.ones(3))


def test_missing_losses_keyword():
  tx = sa.softadapt_track(3)
  state = tx.init(jnp.zeros(2))
  with pytest.raises(TypeError, match=r"losses=.*K=3"):
    tx.update(jnp.zeros(2), state)


def test_find_softadapt_state_errors():
  with pytest.raises(ValueError, match=r"no SoftAdaptState found"):
    sa.find_softadapt_state(optax.adam(1.0).init(jnp.zeros(2)))
  two = optax.chain(sa.softadapt_track(2), sa.softadapt_track(2))
  with pytest.raises(ValueError, match=r"more than one SoftAdaptState"):
    sa.find_softadapt_state(two.init(jnp.zeros(2)))
