"""SoftAdapt's own state machine (SPEC sections 5-6) and its functional core.

The contracts every rule shares (jit, vmap, skips, dtypes, routes, ...) are in
``test_contract.py``; the maths and the oracle parity in
``test_softadapt_maths.py``. Here: the ring buffer, warm-up, ``update_every``,
the functional core agreeing with the rule on every setting, the diagnostics
of the log-slope rule, and SoftAdapt's properties.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import softadapt_jax as sa

VARIANTS = ("original", "normalized", "loss_weighted")
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


def _loss_sequence(num_steps, num_losses, seed=0):
  rng = np.random.default_rng(seed)
  start = rng.uniform(0.5, 5.0, size=num_losses)
  decay = rng.uniform(-0.05, 0.2, size=num_losses)
  t = np.arange(num_steps)[:, None]
  noise = 1 + 0.05 * rng.normal(size=(num_steps, num_losses))
  return (start * np.exp(-decay * t) * noise).astype(np.float32)


def _run(step, state, losses):
  out = []
  for row in losses:
    w, state = step(state, row)
    out.append(w)
  return np.stack(out), state


def test_init_state_shapes_and_dtypes():
  state = sa.init_state(4, order=3)
  chex.assert_shape(state.history, (4, 4))
  chex.assert_trees_all_equal(state.weights, jnp.full((4,), 0.25))
  assert state.count.dtype == jnp.int32
  assert int(state.count) == int(state.num_skipped) == 0
  assert sa.init_state(2, dtype=jnp.bfloat16).history.dtype == jnp.float32
  assert sa.init_state(2, dtype=jnp.float16).weights.dtype == jnp.float32
  custom = sa.init_state(3, initial_weights=np.array([0.5, 0.25, 0.25]))
  np.testing.assert_array_equal(custom.weights, [0.5, 0.25, 0.25])
  assert len(jax.tree.leaves(state)) == 4


@pytest.mark.parametrize("order", [1, 2, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_warm_up_then_weights_from_the_ring_buffer(order, variant):
  losses = _loss_sequence(order + 6, 3, seed=order)
  step = functools.partial(sa.softadapt_weights, variant=variant)
  ws, state = _run(step, sa.init_state(3, order=order), losses)
  # Warm-up: the first `order` calls return the initial weights.
  np.testing.assert_array_equal(ws[:order], np.full((order, 3), 1 / 3, "f4"))
  # From then on: the weights of the newest order + 1 rows.
  for t in range(order, len(losses)):
    expected = sa.weights_from_history(losses[t - order : t + 1], variant=variant)
    np.testing.assert_allclose(ws[t], expected, rtol=1e-6)
  np.testing.assert_array_equal(state.history, losses[-(order + 1) :])
  assert int(state.count) == len(losses)


@pytest.mark.parametrize("update_every", [2, 3])
def test_update_every_recomputes_then_holds(update_every):
  order, num_steps = 2, 14
  losses = _loss_sequence(num_steps, 2, seed=5)
  step = functools.partial(sa.softadapt_weights, update_every=update_every)
  ws, _ = _run(step, sa.init_state(2, order=order), losses)
  held = np.full(2, 0.5, np.float32)
  for t in range(num_steps):
    since = t - order  # recorded steps since the warm-up's last one
    if since >= 0 and since % update_every == 0:
      held = np.asarray(sa.weights_from_history(losses[t - order : t + 1]))
    np.testing.assert_allclose(ws[t], held, rtol=1e-6, err_msg=f"step {t}")
  assert len({tuple(w) for w in ws}) > 2


def test_nan_before_warm_up_does_not_count():
  state = sa.init_state(2, order=1)
  _, state = sa.softadapt_weights(state, jnp.array([jnp.nan, 1.0]))
  assert int(state.count) == 0
  assert int(state.num_skipped) == 1
  np.testing.assert_array_equal(state.history, np.zeros((2, 2)))


def test_counters_saturate():
  top = jnp.int32(np.iinfo(np.int32).max)
  state = sa.init_state(2)._replace(count=top, num_skipped=top)
  _, state = sa.softadapt_weights(state, jnp.array([1.0, 2.0]))
  _, state = sa.softadapt_weights(state, jnp.array([jnp.inf, 2.0]))
  assert int(state.count) == int(state.num_skipped) == int(top)


# Every setting of the functional core, against the rule built with it.
_KEYS = ("variant", "update_every", "scale_by_num_losses", "log_losses")
SETTINGS = [
    dict(zip(_KEYS, c, strict=True))
    for c in itertools.product(VARIANTS, (1, 3), (False, True), (False, True))
]


@pytest.mark.parametrize("order", [1, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("settings_", [  # update_every=3 mostly under -m slow
    s if s["update_every"] == 1 or (s["scale_by_num_losses"] and not s["log_losses"])
    else pytest.param(s, marks=pytest.mark.slow)
    for s in SETTINGS
], ids=str)
def test_functional_core_agrees_with_the_rule_warm_up_included(settings_, order):
  """init_state + softadapt_weights == softadapt(K, ...), bit for bit.

  Adversarial case of the issue: with ``scale_by_num_losses=True`` the
  warm-up weights of the rule summed to K and those of the functional core to
  1. Both now scale the initial weights to the configured total.
  """
  kw: dict[str, Any] = dict(
      settings_, beta=0.7, stencil="backward", normalization="l1"
  )
  losses = _loss_sequence(order + 8, 3, seed=order)
  rule = sa.softadapt(3, order=order, **kw)
  w_rule, s_rule = _run(jax.jit(rule.update), rule.init(), losses)
  step = jax.jit(functools.partial(sa.softadapt_weights, **kw))
  w_core, s_core = _run(step, sa.init_state(3, order=order), losses)
  np.testing.assert_array_equal(w_rule, w_core)
  chex.assert_trees_all_equal(s_rule, s_core)
  total = 3.0 if settings_["scale_by_num_losses"] else 1.0
  np.testing.assert_allclose(w_core.sum(axis=1), total, rtol=1e-6)


def test_warm_up_weights_are_the_initial_weights_in_the_configured_total():
  state = sa.init_state(2, initial_weights=np.array([0.25, 0.75]))
  w, _ = sa.softadapt_weights(state, jnp.ones(2), scale_by_num_losses=True)
  np.testing.assert_array_equal(w, [0.5, 1.5])
  rule = sa.softadapt(
      2, initial_weights=np.array([0.5, 1.5]), scale_by_num_losses=True
  )
  w, _ = rule.update(rule.init(), jnp.ones(2))
  np.testing.assert_array_equal(w, [0.5, 1.5])


def test_named_losses_through_the_functional_core():
  state, w = sa.init_state(2), None
  losses = [{"pde": 2.0, "bc": 1.0}, {"pde": 1.0, "bc": 1.5}]
  for loss in losses:
    w, state = sa.softadapt_weights(state, loss, beta=1.0)
  assert w is not None
  assert set(w) == {"pde", "bc"}
  # Leaves in tree order (sorted keys): bc first.
  expected = sa.weights_from_history(jnp.array([[1.0, 2.0], [1.5, 1.0]]), beta=1.0)
  np.testing.assert_allclose([w["bc"], w["pde"]], expected, rtol=1e-6)


def test_log_slope_diagnostics_log_the_slopes_of_log_losses():
  """Adversarial case: the diagnostics of a log_losses rule logged dL/dt."""
  rule = sa.softadapt(2, beta=1.0, log_losses=True, order=1)
  state = rule.init()
  for loss in ([4.0, 1.0], [2.0, 1.0]):
    w, state = rule.update(state, jnp.array(loss))
  d = sa.diagnostics(state, rule)
  np.testing.assert_allclose(d["slope"], [np.log(0.5), 0.0], rtol=1e-6)
  np.testing.assert_array_equal(d["loss"], [2.0, 1.0])
  # And the weights are the softmax of exactly those slopes.
  np.testing.assert_allclose(w, jax.nn.softmax(d["slope"]), rtol=1e-6)
  # During warm-up the slopes read 0 (no NaN to trip jax_debug_nans).
  np.testing.assert_array_equal(sa.diagnostics(rule.init(), rule)["slope"], [0, 0])


def test_a_zero_loss_in_log_losses_is_recorded():
  rule = sa.softadapt(2, beta=0.1, log_losses=True)
  state = rule.init()
  for loss in ([1.0, 0.0], [0.5, 0.0], [0.25, 0.0]):
    w, state = rule.update(state, jnp.array(loss))
  assert int(state.count) == 3
  assert int(state.num_skipped) == 0
  # log(0) reads as log of the smallest normal float: a zero slope.
  np.testing.assert_allclose(w, jax.nn.softmax(0.1 * jnp.array([np.log(0.5), 0])))


# ------------------------------------------------------------ properties


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
  return np.clip(signs * 10.0**exponents, min_value, max_value).astype(np.float32)


@PROPERTY_SETTINGS
@given(
    history=histories(),
    variant=st.sampled_from(VARIANTS),
    normalization=st.sampled_from(["signed", "l1"]),
    beta=st.floats(-1e3, 1e3),
    order_offset=st.integers(0, 4),
)
def test_weights_from_history_is_a_probability_vector(
    history, variant, normalization, beta, order_offset
):
  order = max(1, history.shape[0] - 1 - order_offset)
  w = np.asarray(_weights_fn(variant, order, normalization)(history, beta=beta))
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
@given(history=histories(), beta=st.floats(-50, 50))
def test_l1_normalized_weights_stay_within_exp_abs_beta(history, beta):
  # sum |z| <= 1, so max z - min z <= 1: the docstring's "equal weights in all
  # but name" at beta 0.1 (no two weights apart by more than exp(0.1)).
  w = np.asarray(_weights_fn("normalized", None, "l1")(history, beta=beta), np.float64)
  assert w.min() > 0, (w, beta)
  assert w.max() / w.min() <= np.exp(abs(beta)) * (1 + 1e-4), (w, beta)


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
  column %= history.shape[1]
  shifted = history.astype(np.float64)
  shifted[:, column] += shift
  with jax.enable_x64(True):
    base = sa.weights_from_history(history.astype(np.float64), beta=beta)
    moved = sa.weights_from_history(shifted, beta=beta)
  np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("order", range(1, 11))
def test_every_order_up_to_the_bound_is_exact_in_float32(order):
  """Slopes of a polynomial of degree `order` are exact to float32 rounding.

  The rounding error of a slope is at most ``||c||_1 * 2**-24 * max|H|``
  (about ``1.4e-5 max|H|`` at order 10), the claim behind the order bound.
  """
  t = np.arange(order + 1, dtype=np.float64) / order
  coeffs = np.random.default_rng(order).uniform(-1, 1, size=order + 1)
  values = np.polyval(coeffs, t)[:, None] + 3.0
  exact = np.polyval(np.polyder(coeffs), 0.0) / order  # per step
  got = float(sa.slopes(jnp.asarray(values, jnp.float32))[0])
  c1 = np.abs(sa.finite_difference_coefficients(order)).sum()
  bound = 2 * c1 * 2**-24 * np.abs(values).max()
  assert abs(got - exact) <= bound, (order, got, exact, bound)
