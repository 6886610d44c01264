"""The training-time state machine (SPEC sections 5, 6 and 8)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa

VARIANTS = ("original", "normalized", "loss_weighted")


def _loss_sequence(num_steps, num_losses, seed=0):
  rng = np.random.default_rng(seed)
  start = rng.uniform(0.5, 5.0, size=num_losses)
  decay = rng.uniform(0.0, 0.2, size=num_losses)
  t = np.arange(num_steps)[:, None]
  noise = 1 + 0.05 * rng.normal(size=(num_steps, num_losses))
  return (start * np.exp(-decay * t) * noise).astype(np.float32)


def _loop(step, state, losses):
  """Python loop: the weights of every step and the final state."""
  out = []
  for row in losses:
    w, state = step(state, row)
    out.append(w)
  return np.stack(out), state


def _run(state, losses, **kwargs):
  return _loop(functools.partial(sa.softadapt_weights, **kwargs), state, losses)


def _scan(state, losses, **kwargs):
  def body(state, row):
    w, state = sa.softadapt_weights(state, row, **kwargs)
    return state, w

  state, ws = jax.lax.scan(body, state, jnp.asarray(losses))
  return ws, state


def test_init_state_shapes_and_dtypes():
  state = sa.init_state(4, order=3)
  chex.assert_shape(state.history, (4, 4))
  chex.assert_trees_all_equal(state.weights, jnp.full((4,), 0.25))
  assert state.count.dtype == jnp.int32
  assert int(state.count) == 0
  assert int(state.num_skipped) == 0
  assert sa.init_state(2, dtype=jnp.bfloat16).history.dtype == jnp.float32
  assert sa.init_state(2, dtype=jnp.float16).weights.dtype == jnp.float32
  custom = sa.init_state(3, initial_weights=[1.0, 2.0, 3.0])
  np.testing.assert_array_equal(custom.weights, [1.0, 2.0, 3.0])
  # A pytree of arrays: it flattens into exactly its four fields.
  assert len(jax.tree.leaves(state)) == 4


@pytest.mark.parametrize("order", [1, 2, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_warm_up_then_weights_from_the_ring_buffer(order, variant):
  losses = _loss_sequence(order + 6, 3, seed=order)
  ws, state = _run(sa.init_state(3, order=order), losses, variant=variant)
  # Warm-up: the first `order` calls return the initial weights.
  np.testing.assert_array_equal(ws[:order], np.full((order, 3), 1 / 3, "f4"))
  # From then on: the weights of the newest order + 1 rows.
  for t in range(order, len(losses)):
    expected = sa.weights_from_history(
        losses[t - order : t + 1], variant=variant
    )
    np.testing.assert_allclose(ws[t], expected, rtol=1e-6)
  np.testing.assert_array_equal(state.history, losses[-(order + 1) :])
  assert int(state.count) == len(losses)


@pytest.mark.parametrize("update_every", [2, 3])
def test_update_every_recomputes_then_holds(update_every):
  order, num_steps = 2, 14
  losses = _loss_sequence(num_steps, 2, seed=5)
  ws, _ = _run(sa.init_state(2, order=order), losses, update_every=update_every)
  held = np.full(2, 0.5, np.float32)
  for t in range(num_steps):
    since = t - order  # recorded steps since the warm-up's last one
    if since >= 0 and since % update_every == 0:
      held = np.asarray(sa.weights_from_history(losses[t - order : t + 1]))
    np.testing.assert_allclose(ws[t], held, rtol=1e-6, err_msg=f"step {t}")
  assert len({tuple(w) for w in ws}) > 2  # it did change


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_losses_are_skipped_in_scan(variant, seed):
  rng = np.random.default_rng(seed)
  clean = _loss_sequence(40, 3, seed=seed)
  bad_steps = np.sort(rng.choice(np.arange(1, 45), size=8, replace=False))
  dirty = list(clean)
  for i, step in enumerate(bad_steps):
    row = clean[min(step, len(clean) - 1)].copy()
    row[rng.integers(3)] = [np.nan, np.inf, -np.inf][i % 3]
    dirty.insert(step, row)
  dirty = np.stack(dirty)
  bad = ~np.all(np.isfinite(dirty), axis=1)
  assert bad.sum() == 8

  run = jax.jit(functools.partial(_scan, variant=variant, beta=0.5))
  w_dirty, s_dirty = run(sa.init_state(3, order=2), dirty)
  w_clean, s_clean = run(sa.init_state(3, order=2), clean)
  assert np.all(np.isfinite(w_dirty))
  # The recorded steps give exactly the clean run's weights ...
  np.testing.assert_array_equal(np.asarray(w_dirty)[~bad], w_clean)
  # ... and a skipped step returns the weights held before it.
  for t in np.flatnonzero(bad):
    expected = w_dirty[t - 1] if t > 0 else np.full(3, 1 / 3, "f4")
    np.testing.assert_array_equal(w_dirty[t], expected)
  chex.assert_trees_all_equal(s_dirty.history, s_clean.history)
  assert int(s_dirty.count) == 40
  assert int(s_dirty.num_skipped) == 8


def test_nan_before_warm_up_does_not_count():
  state = sa.init_state(2, order=1)
  _, state = sa.softadapt_weights(state, jnp.array([jnp.nan, 1.0]))
  assert int(state.count) == 0
  assert int(state.num_skipped) == 1
  np.testing.assert_array_equal(state.history, np.zeros((2, 2)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_jit_equals_no_jit(variant):
  losses = _loss_sequence(12, 4, seed=3)
  kwargs = dict(variant=variant, beta=0.3, update_every=2)
  w_eager, s_eager = _run(sa.init_state(4, order=3), losses, **kwargs)
  step = jax.jit(functools.partial(sa.softadapt_weights, **kwargs))
  w_jit, s_jit = _loop(step, sa.init_state(4, order=3), losses)
  np.testing.assert_allclose(w_jit, w_eager, rtol=1e-6)
  chex.assert_trees_all_close(s_jit, s_eager, rtol=1e-6)
  w_scan, _ = jax.jit(functools.partial(_scan, **kwargs))(
      sa.init_state(4, order=3), losses
  )
  np.testing.assert_allclose(w_scan, w_eager, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_vmap_over_beta_equals_loop(variant):
  losses = _loss_sequence(10, 3, seed=7)
  betas = jnp.array([-2.0, 0.0, 0.1, 1.0, 5.0])

  def one_run(beta):
    return _scan(sa.init_state(3, order=2), losses, beta=beta, variant=variant)

  w_vmapped, _ = jax.jit(jax.vmap(one_run))(betas)
  for i, beta in enumerate(betas):
    w_single, _ = one_run(beta)
    np.testing.assert_allclose(w_vmapped[i], w_single, rtol=1e-5, atol=1e-7)
  # The betas really give different weights.
  assert not np.allclose(w_vmapped[1, -1], w_vmapped[3, -1])


def test_no_recompilation_across_steps_and_betas():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, losses, beta):
    return sa.softadapt_weights(state, losses, beta=beta, variant="normalized")

  state = sa.init_state(3, order=2)
  for t, row in enumerate(jnp.asarray(_loss_sequence(8, 3))):
    _, state = step(state, row, jnp.float32(0.1 * (t + 1)))  # a new beta each
  _, state = step(state, jnp.array([jnp.nan, 1.0, 1.0]), jnp.float32(3.0))
  assert step._cache_size() == 1
  assert int(state.count) == 8


def test_axis_name_averages_losses_before_the_history():
  # vmap with an axis name stands in for shard_map/pmap replicas: each replica
  # sees its own losses, the history must record their mean on every replica.
  replicas = jnp.asarray(
      np.stack([_loss_sequence(6, 3, seed=s) for s in range(4)])
  )  # [R, T, K]
  mean = replicas.mean(axis=0)

  def run(local):
    return _scan(sa.init_state(3, order=2), local, axis_name="data", beta=1.0)

  w_rep, s_rep = jax.vmap(run, axis_name="data")(replicas)
  w_ref, s_ref = _scan(sa.init_state(3, order=2), mean, beta=1.0)
  for r in range(4):
    np.testing.assert_allclose(w_rep[r], w_ref, rtol=1e-6)
    np.testing.assert_allclose(s_rep.history[r], s_ref.history, rtol=1e-6)


def test_nan_on_one_replica_is_skipped_on_all():
  local = jnp.array([[1.0, 2.0], [jnp.nan, 2.0]])

  def step(losses):
    _, state = sa.softadapt_weights(
        sa.init_state(2), losses, axis_name="data"
    )
    return state.count, state.num_skipped

  count, skipped = jax.vmap(step, axis_name="data")(local)
  np.testing.assert_array_equal(count, [0, 0])
  np.testing.assert_array_equal(skipped, [1, 1])


def test_low_precision_losses_use_a_float32_history():
  state = sa.init_state(2, order=1, dtype=jnp.bfloat16)
  for row in ([3.0, 1.0], [2.0, 0.9], [1.5, 0.85]):
    w, state = sa.softadapt_weights(
        state, jnp.asarray(row, jnp.bfloat16), beta=1.0
    )
  assert state.history.dtype == jnp.float32
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(jnp.sum(w), 1.0, rtol=1e-6)


def test_counters_saturate():
  state = sa.init_state(2)._replace(
      count=jnp.int32(np.iinfo(np.int32).max),
      num_skipped=jnp.int32(np.iinfo(np.int32).max),
  )
  _, state = sa.softadapt_weights(state, jnp.array([1.0, 2.0]))
  _, state = sa.softadapt_weights(state, jnp.array([jnp.inf, 2.0]))
  assert int(state.count) == np.iinfo(np.int32).max
  assert int(state.num_skipped) == np.iinfo(np.int32).max


def test_scale_by_num_losses_in_the_state_machine():
  state = sa.init_state(3, initial_weights=jnp.ones(3))
  ws, _ = _run(state, _loss_sequence(4, 3), scale_by_num_losses=True)
  np.testing.assert_allclose(ws.sum(axis=1), 3.0, rtol=1e-6)
