"""One contract test over every loss-weighting rule (as optax's contrib tests).

Each rule is built by a factory taking its float hyperparameter, so the same
test sweeps it with ``vmap`` and ``inject_hyperparams``.
"""

from __future__ import annotations

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import softadapt_jax as sa

K = 3
STEPS = 12


def _softadapt(h, **kw):
  return sa.softadapt(K, beta=h, order=2, **kw)


def _log_softadapt(h, **kw):
  return sa.softadapt(K, beta=h, log_losses=True, variant="loss_weighted", **kw)


def _ratio(h, **kw):
  return sa.ratio_softadapt(K, temperature=h, **kw)


def _ratio_neuralpde(h, **kw):
  conv = dict(sa.RATIO_SOFTADAPT_CONVENTIONS["neuralpde"], temperature=h)
  return sa.ratio_softadapt(K, update_every=2, **conv, **kw)


def _dwa_epochs(h, **kw):
  return sa.dwa(K, temperature=h, **kw)


def _dwa_steps(h, **kw):
  return sa.dwa(K, temperature=h, steps_per_epoch=3, **kw)


def _relobralo(h, **kw):
  return sa.relobralo(K, temperature=h, expected_rho=0.5, alpha=0.9, **kw)


def _random(h, **kw):
  del h  # no float hyperparameter: the sweep is over keys
  return sa.random_weighting(K, **kw)


# name -> (factory, two hyperparameter values, weights sum, divides by losses)
RULES = {
    "softadapt": (_softadapt, (0.1, 2.0), 1.0, False),
    "log_softadapt": (_log_softadapt, (0.5, 3.0), 1.0, True),
    "ratio_softadapt": (_ratio, (1.0, 0.2), float(K), True),
    "ratio_neuralpde": (_ratio_neuralpde, (10.0, 0.5), float(K), True),
    "dwa_epochs": (_dwa_epochs, (2.0, 0.5), float(K), True),
    "dwa_steps": (_dwa_steps, (2.0, 0.5), float(K), True),
    "relobralo": (_relobralo, (0.1, 1.0), float(K), True),
    "random_weighting": (_random, (1.0, 1.0), 1.0, False),
}
ALL = sorted(RULES)


def _losses(seed: int = 0, steps: int = STEPS) -> jax.Array:
  """Positive, decaying loss vectors on different scales."""
  rng = np.random.default_rng(seed)
  t = np.arange(steps)[:, None]
  scale = np.array([1e2, 1.0, 1e-2])
  rate = rng.uniform(0.05, 0.4, size=(1, K))
  noise = rng.uniform(0.8, 1.2, size=(steps, K))
  return jnp.asarray(scale * np.exp(-rate * t) * noise, jnp.float32)


def _scan(rule, losses, key=None):
  def body(state, loss):
    w, state = rule.update(state, loss)
    return state, w

  return jax.lax.scan(body, rule.init(key=key), losses)


@pytest.mark.parametrize("name", ALL)
def test_jit_nojit_and_scan_agree(name):
  factory, (h, _), _, _ = RULES[name]
  rule = factory(h)
  losses = _losses()
  state, eager, jitted = rule.init(), [], []
  jstate, update = rule.init(), jax.jit(rule.update)
  for loss in losses:
    w, state = rule.update(state, loss)
    eager.append(w)
    w, jstate = update(jstate, loss)
    jitted.append(w)
  final, scanned = jax.jit(_scan, static_argnums=0)(rule, losses)
  np.testing.assert_allclose(np.stack(eager), np.stack(jitted), rtol=1e-6)
  np.testing.assert_allclose(np.stack(eager), scanned, rtol=1e-6)
  chex.assert_trees_all_close(state, final, rtol=1e-6)
  # The weights move away from their initial values after warm-up.
  assert not np.allclose(scanned[-1], scanned[0])


@pytest.mark.parametrize("name", ALL)
def test_vmap_over_hyperparameter_equals_loop(name):
  factory, hs, _, _ = RULES[name]
  losses = _losses(1)
  if name == "random_weighting":
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda k: _scan(factory(1.0), losses, k)[1])(keys)
    single = [_scan(factory(1.0), losses, k)[1] for k in keys]
  else:
    hs = jnp.asarray(hs)
    batched = jax.vmap(lambda h: _scan(factory(h), losses)[1])(hs)
    single = [_scan(factory(h), losses)[1] for h in hs]
  np.testing.assert_allclose(batched, np.stack(single), rtol=1e-5, atol=1e-7)
  assert not np.allclose(batched[0], batched[1])


@pytest.mark.parametrize("name", ALL)
def test_no_recompilation(name):
  factory, hs, _, _ = RULES[name]
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, loss, h):
    return factory(h).update(state, loss)

  state = factory(hs[0]).init()
  bad = jnp.array([jnp.nan, 1.0, 1.0])
  for i, loss in enumerate([*_losses()[:4], bad]):
    _, state = step(state, loss, hs[i % 2])
  assert step._cache_size() == 1


def _inject(losses, rows, values):
  out = np.array(losses)
  for r, v in zip(rows, values, strict=True):
    out = np.insert(out, r, v, axis=0)
  return jnp.asarray(out)


@pytest.mark.parametrize("name", ALL)
def test_bad_loss_vectors_are_skipped_without_poisoning(name):
  factory, (h, _), _, divides = RULES[name]
  rule = factory(h)
  clean = _losses(2)
  bad = [[np.nan, 1.0, 1.0], [1.0, np.inf, 1.0], [-np.inf, 1.0, 1.0]]
  if divides:  # a rule that divides by losses (or takes logs) skips <= 0
    bad += [[0.0, 1.0, 1.0], [1.0, -2.0, 1.0]]
  rows = [1, 4, 6, 9, 12][: len(bad)]
  dirty = _inject(clean, rows, bad)
  state_c, w_clean = _scan(rule, clean)
  state_d, w_dirty = _scan(rule, dirty)
  keep = np.ones(len(dirty), bool)
  keep[rows] = False
  # The recorded steps are bit-identical to the run without the bad ones.
  np.testing.assert_array_equal(np.asarray(w_dirty)[keep], w_clean)
  assert int(state_d.num_skipped) == len(bad)
  assert int(state_d.count) == int(state_c.count) == len(clean)
  chex.assert_trees_all_equal(
      state_c._replace(num_skipped=state_d.num_skipped), state_d
  )
  assert np.all(np.isfinite(w_dirty))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("loss_dtype", [jnp.bfloat16, jnp.float32])
def test_dtypes(name, loss_dtype):
  factory, (h, _), _, _ = RULES[name]
  rule = factory(h)
  state = rule.init(dtype=jnp.bfloat16)  # promoted: weights need float32
  assert state.weights.dtype == jnp.float32
  w, state = rule.update(state, _losses()[0].astype(loss_dtype))
  w, state = rule.update(state, _losses()[1].astype(loss_dtype))
  assert w.dtype == jnp.float32
  chex.assert_trees_all_equal_dtypes(state, rule.init())


@pytest.mark.parametrize("name", ALL)
def test_float64_state_under_x64(name):
  factory, (h, _), _, _ = RULES[name]
  with jax.enable_x64(True):
    rule = factory(h)
    state = rule.init(dtype=jnp.float64)
    w, _ = rule.update(state, _losses()[0].astype(jnp.float64))
    assert w.dtype == jnp.float64
    tx = sa.track_weights(rule)
    assert tx.init(jnp.zeros(2, jnp.float64)).weights.dtype == jnp.float64


def _problem():
  """Three quadratic loss components of a 2-parameter model."""
  targets = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
  scales = jnp.array([10.0, 1.0, 0.1])

  def loss_fn(x, shift):
    return scales * jnp.sum((x[None] - targets - shift) ** 2, axis=1)

  return loss_fn


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("use_jit", [True, False])
def test_optax_routes_agree(name, use_jit):
  """One-VJP + track_weights == jacrev + combine_grads == a hand loop."""
  factory, (h, _), _, _ = RULES[name]
  rule = factory(h)
  loss_fn = _problem()
  tx_track = optax.chain(sa.track_weights(rule), optax.sgd(0.01))
  tx_comb = optax.chain(sa.combine_grads(rule), optax.sgd(0.01))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
  maybe_jit = jax.jit if use_jit else (lambda f: f)

  @maybe_jit
  def step_track(x, opt_state, shift):
    out = grad_fn(opt_state, x, shift)
    updates, opt_state = tx_track.update(
        out.grad, opt_state, x, losses=out.losses, unexpected_extra_arg=1.0
    )
    return optax.apply_updates(x, updates), opt_state, out.weights

  @maybe_jit
  def step_comb(x, opt_state, shift):
    stacked = jax.jacrev(loss_fn)(x, shift)
    updates, opt_state = tx_comb.update(
        stacked, opt_state, x, losses=loss_fn(x, shift)
    )
    return optax.apply_updates(x, updates), opt_state

  @maybe_jit
  def step_hand(x, state, shift):
    w, state = rule.update(state, loss_fn(x, shift))
    g = jax.grad(lambda y: jnp.dot(w, loss_fn(y, shift)))(x)
    return x - 0.01 * g, state, w

  x1 = x2 = x3 = jnp.array([0.3, -0.2])
  s1, s2, s3 = tx_track.init(x1), tx_comb.init(x2), rule.init()
  for i in range(8):
    shift = 0.01 * i
    x1, s1, w1 = step_track(x1, s1, shift)
    x2, s2 = step_comb(x2, s2, shift)
    x3, s3, w3 = step_hand(x3, s3, shift)
    np.testing.assert_allclose(w1, w3, rtol=1e-6)
  np.testing.assert_allclose(x1, x3, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(x2, x3, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(sa.find_weighting_state(s1, rule), s3, rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in ALL if n != "random_weighting"])
def test_inject_hyperparams(name):
  factory, (h0, h1), _, _ = RULES[name]

  def make(hyper):
    return sa.combine_grads(factory(hyper))

  tx = optax.inject_hyperparams(make)(hyper=h0)
  chex.clear_trace_counter()
  loss_fn = _problem()
  x = jnp.array([0.3, -0.2])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(opt_state, shift):
    stacked = jax.jacrev(loss_fn)(x, shift)
    return tx.update(stacked, opt_state, x, losses=loss_fn(x, shift))

  opt_state = tx.init(x)
  hand_state = factory(h0).init()
  for i in range(6):
    hyper = h0 if i < 3 else h1
    opt_state.hyperparams["hyper"] = jnp.asarray(hyper)
    updates, opt_state = step(opt_state, 0.01 * i)
    # The injected value drives the weights as a rule built with it would.
    w, hand_state = factory(hyper).update(hand_state, loss_fn(x, 0.01 * i))
    expected = w @ jax.jacrev(loss_fn)(x, 0.01 * i)
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-7)
  assert step._cache_size() == 1
  chex.assert_trees_all_close(opt_state.inner_state, hand_state, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_axis_name_averages_losses_over_replicas(name):
  factory, (h, _), _, _ = RULES[name]
  losses = _losses(3)
  per_replica = jnp.stack([losses * 0.5, losses * 1.5])  # mean: losses
  rule_dp = factory(h, axis_name="data")

  def run(local):
    return _scan(rule_dp, local)[1]

  w_dp = jax.vmap(run, axis_name="data")(per_replica)
  w_single = _scan(factory(h), losses)[1]
  np.testing.assert_array_equal(w_dp[0], w_dp[1])
  np.testing.assert_allclose(w_dp[0], w_single, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    data=hnp.arrays(
        np.float32,
        (6, K),
        elements=st.floats(float(np.float32(1e-20)), float(np.float32(1e20)), width=32),
    ),
    hyper_scale=st.floats(0.01, 100.0),
)
def test_weights_are_finite_and_sum_as_configured(name, data, hyper_scale):
  _, (h, _), total, _ = RULES[name]
  _, w = _jitted_scan(name, h * hyper_scale, jnp.asarray(data))
  w = np.asarray(w, np.float64)
  assert np.all(np.isfinite(w))
  assert np.all(w >= 0)
  np.testing.assert_allclose(w.sum(axis=1), total, rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_scan(name, hyper, losses):
  """One compilation per rule: the hyperparameter is traced."""
  return _scan(RULES[name][0](hyper), losses)


@pytest.mark.parametrize("name", ["relobralo", "random_weighting"])
def test_random_rules_are_reproducible_and_key_driven(name):
  factory, (h, _), _, _ = RULES[name]
  rule = factory(h)
  losses = _losses(4)
  a = _scan(rule, losses, jax.random.key(7))[1]
  b = _scan(rule, losses, jax.random.PRNGKey(7))[1]  # raw keys work too
  c = _scan(rule, losses, jax.random.key(8))[1]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # The default key comes from `seed`.
  np.testing.assert_array_equal(
      _scan(factory(h, seed=7), losses)[1], a
  )


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="lookback"):
    sa.ratio_softadapt(2, lookback="sometimes")
  with pytest.raises(TypeError, match="steps_per_epoch"):
    sa.dwa(2, steps_per_epoch=2.5)
  with pytest.raises(ValueError, match="temperature"):
    sa.relobralo(2, temperature=jnp.ones(2))
  rule = sa.dwa(2)
  with pytest.raises(ValueError, match=r"`losses` must have shape \(2,\)"):
    rule.update(rule.init(), jnp.ones(3))
  with pytest.raises(TypeError, match="RatioSoftAdaptState"):
    sa.ratio_softadapt(2).update(sa.dwa(2).init(), jnp.ones(2))
  with pytest.raises(TypeError, match="`rule` must be a LossWeighting"):
    sa.track_weights(optax.sgd(0.1))
  tx = sa.track_weights(sa.relobralo(2))
  with pytest.raises(TypeError, match="losses"):
    tx.update(jnp.zeros(2), tx.init(jnp.zeros(2)), None)
  with pytest.raises(TypeError, match="PRNG key"):
    sa.random_weighting(2).init(key=jnp.zeros(2, jnp.float32))
  with pytest.raises(ValueError, match="no RatioSoftAdaptState"):
    sa.find_weighting_state(optax.sgd(0.1).init(0.0), sa.ratio_softadapt(2))
