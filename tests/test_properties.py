"""Property tests (hypothesis) of the weights, on any finite history."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import softadapt_jax as sa

VARIANTS = ("original", "normalized", "loss_weighted")
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


@functools.cache
def _weights_fn(variant, order, normalization="signed"):
  return jax.jit(
      functools.partial(
          sa.weights_from_history,
          variant=variant,
          order=order,
          normalization=normalization,
      )
  )


@st.composite
def histories(draw, min_value=-1e30, max_value=1e30, max_k=8):
  n = draw(st.integers(2, 6))
  k = draw(st.integers(1, max_k))
  exponents = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-30, 30)))
  signs = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from([-1, 1])))
  scale = np.clip(signs * 10.0**exponents, min_value, max_value)
  return scale.astype(np.float32)


@PROPERTY_SETTINGS
@given(
    history=histories(),
    variant=st.sampled_from(VARIANTS),
    normalization=st.sampled_from(["signed", "l1"]),
    beta=st.floats(-1e3, 1e3),
    order_offset=st.integers(0, 4),
)
def test_weights_are_a_probability_vector(
    history, variant, normalization, beta, order_offset
):
  order = max(1, history.shape[0] - 1 - order_offset)
  w = np.asarray(
      _weights_fn(variant, order, normalization)(history, beta=beta)
  )
  assert np.all(np.isfinite(w)), (w, history, beta)
  assert np.all(w >= 0), w
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)


@PROPERTY_SETTINGS
@given(
    history=histories(min_value=1e-3, max_value=1e3),
    variant=st.sampled_from(VARIANTS),
    beta=st.floats(-5, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_permutation_equivariance(history, variant, beta, seed):
  history = np.abs(history)
  perm = np.random.default_rng(seed).permutation(history.shape[1])
  fn = _weights_fn(variant, None)
  np.testing.assert_allclose(
      fn(history[:, perm], beta=beta),
      np.asarray(fn(history, beta=beta))[perm],
      rtol=1e-5,
      atol=1e-7,
  )


@PROPERTY_SETTINGS
@given(history=histories(), variant=st.sampled_from(["original", "normalized"]))
def test_beta_zero_is_uniform(history, variant):
  w = _weights_fn(variant, None)(history, beta=0.0)
  np.testing.assert_allclose(w, 1.0 / history.shape[1], rtol=1e-6)


@PROPERTY_SETTINGS
@given(
    history=histories(min_value=-1e3, max_value=1e3),
    shift=st.floats(-1e3, 1e3),
    column=st.integers(0, 7),
    beta=st.floats(-2, 2),
)
def test_original_is_invariant_to_a_constant_added_to_a_component(
    history, shift, column, beta
):
  # Stencil coefficients sum to zero, so slopes ignore a constant offset.
  # Checked in float64, where the offset itself is represented exactly enough.
  column %= history.shape[1]
  shifted = history.astype(np.float64)
  shifted[:, column] += shift
  with jax.enable_x64(True):
    base = sa.weights_from_history(history.astype(np.float64), beta=beta)
    moved = sa.weights_from_history(shifted, beta=beta)
  np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-12)


@PROPERTY_SETTINGS
@given(
    losses=hnp.arrays(
        np.float32,
        (12, 3),
        elements=st.one_of(
            st.floats(0.0009765625, 1024.0, width=32),
            st.sampled_from([np.nan, np.inf, -np.inf]),
        ),
    ),
    variant=st.sampled_from(VARIANTS),
)
def test_state_machine_weights_stay_convex_with_non_finite_losses(
    losses, variant
):
  step = _state_step(variant)
  state = sa.init_state(3, order=2)
  for row in jnp.asarray(losses):
    w, state = step(state, row)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-6)
  finite_rows = int(np.all(np.isfinite(losses), axis=1).sum())
  assert int(state.count) == finite_rows
  assert int(state.num_skipped) == 12 - finite_rows


@functools.cache
def _state_step(variant):
  return jax.jit(functools.partial(sa.softadapt_weights, variant=variant))
