"""Tests of the SoftAdapt direction from one backward pass (SPEC section 7).

``sa.softadapt_value_and_grad`` must return ``h = sum_k alpha_k grad f_k`` with
``alpha`` a constant of the backward pass, from a single ``jax.vjp``: equal to
``jax.jacrev`` contracted with the weights and to a loop of ``K`` ``jax.grad``
calls, but at the cost of one backward pass.
"""

import collections
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

VARIANTS = ("original", "normalized", "loss_weighted")
# Large enough that the weights move visibly away from uniform in a few steps,
# small enough that the softmax does not saturate (the normalized variant's
# inputs are scale-free, the others' are slopes of O(0.1) per step).
BETAS = {"original": 10.0, "normalized": 2.0, "loss_weighted": 5.0}
BETA = BETAS["original"]
# float32 agreement of two ways of computing the same direction.
RTOL, ATOL = 1e-5, 1e-6
NUM_WARMUP_STEPS = 5


def _init_mlp(num_losses, key=0, din=3, hidden=8):
  """A two-layer MLP with several leaves, one output per loss component."""
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  return {
      "dense1": {
          "w": jax.random.normal(k1, (din, hidden)) / np.sqrt(din),
          "b": jnp.full((hidden,), 0.1, jnp.float32),
      },
      "dense2": {
          "w": jax.random.normal(k2, (hidden, num_losses)) / np.sqrt(hidden),
          "b": jnp.zeros((num_losses,)),
      },
      "gain": jax.random.uniform(k3, (num_losses,), minval=0.5, maxval=1.5),
  }


def _data(num_losses, key=1, n=16, din=3):
  kx, ky = jax.random.split(jax.random.key(key))
  x = jax.random.normal(kx, (n, din))
  y = jax.random.normal(ky, (n, num_losses))
  return x, y


@functools.cache
def _make_losses(num_losses):
  """Loss components of different scales, sharing the MLP trunk.

  Cached, so that jitted references built on it compile once per ``K``.
  """
  scales = jnp.linspace(0.5, 2.0, num_losses)

  def losses(params, x, y):
    h = jnp.tanh(x @ params["dense1"]["w"] + params["dense1"]["b"])
    pred = (h @ params["dense2"]["w"] + params["dense2"]["b"]) * params["gain"]
    return scales * jnp.mean((pred - y) ** 2, axis=0)

  return losses


def _contract(weights, stacked):
  return jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), stacked)


@functools.cache
def _references(num_losses):
  """``K``-backward-pass references for the direction, jitted once per ``K``."""
  losses = _make_losses(num_losses)

  @jax.jit
  def references(params, x, y, weights):
    # jacrev: K backward passes (batched), then contract with the weights.
    by_jacrev = _contract(weights, jax.jacrev(losses)(params, x, y))
    # A Python loop of K jax.grad calls, each weighted.
    by_loop = jax.tree.map(jnp.zeros_like, params)
    for k in range(num_losses):
      g_k = jax.grad(lambda p, k=k: losses(p, x, y)[k])(params)
      by_loop = jax.tree.map(
          lambda acc, g, k=k: acc + weights[k] * g, by_loop, g_k
      )
    return losses(params, x, y), by_jacrev, by_loop

  return references


def _sgd(params, grad, lr=0.05):
  return jax.tree.map(lambda p, g: p - lr * g, params, grad)


def _warm_up(grad_fn, state, params, x, y, steps=NUM_WARMUP_STEPS):
  """Runs a few SGD steps along the SoftAdapt direction."""
  for _ in range(steps):
    out = grad_fn(state, params, x, y)
    params, state = _sgd(params, out.grad), out.state
  return state, params


def _assert_not_uniform(weights):
  weights = np.asarray(weights)
  assert np.ptp(weights) > 1e-2, f"weights still (nearly) uniform: {weights}"


@pytest.mark.parametrize("use_jit", [True, False], ids=["jit", "nojit"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_losses", [2, 3, 5])
def test_direction_equals_jacrev_and_grad_loop(num_losses, variant, use_jit):
  losses = _make_losses(num_losses)
  params = _init_mlp(num_losses)
  x, y = _data(num_losses)
  beta = BETAS[variant]
  grad_fn = sa.softadapt_value_and_grad(losses, beta=beta, variant=variant)
  if use_jit:
    grad_fn = jax.jit(grad_fn)
  state, params = _warm_up(grad_fn, sa.init_state(num_losses), params, x, y)
  assert int(state.count) == NUM_WARMUP_STEPS

  out = grad_fn(state, params, x, y)
  _assert_not_uniform(out.weights)
  values, by_jacrev, by_loop = _references(num_losses)(
      params, x, y, out.weights
  )
  chex.assert_trees_all_close(out.losses, values, rtol=RTOL)
  expected_weights, expected_state = sa.softadapt_weights(
      state, values, beta=beta, variant=variant
  )
  chex.assert_trees_all_close(out.weights, expected_weights, rtol=RTOL)
  chex.assert_trees_all_close(out.state, expected_state, rtol=RTOL)
  chex.assert_trees_all_equal_structs(out.grad, params)
  chex.assert_trees_all_close(out.grad, by_jacrev, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(out.grad, by_loop, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("variant", "order"),
    [("original", 1), ("normalized", 2), ("loss_weighted", 3)],
)
def test_stop_gradient_matters(variant, order):
  num_losses = 3
  losses = _make_losses(num_losses)
  params = _init_mlp(num_losses)
  x, y = _data(num_losses)
  grad_fn = jax.jit(
      sa.softadapt_value_and_grad(losses, beta=BETAS[variant], variant=variant)
  )
  state, params = _warm_up(
      grad_fn, sa.init_state(num_losses, order=order), params, x, y
  )
  out = grad_fn(state, params, x, y)
  _assert_not_uniform(out.weights)
  weights_fn = functools.partial(
      sa.softadapt_weights, beta=BETAS[variant], variant=variant
  )
  fun = lambda p: losses(p, x, y)

  # The gradient flowing through alpha(L) too: not the SoftAdapt direction.
  through_weights = jax.jit(
      jax.grad(lambda p: jnp.dot(weights_fn(state, fun(p))[0], fun(p)))
  )(params)
  held_weights = jax.jit(
      jax.grad(
          lambda p: jnp.dot(
              jax.lax.stop_gradient(weights_fn(state, fun(p))[0]), fun(p)
          )
      )
  )(params)

  chex.assert_trees_all_close(out.grad, held_weights, rtol=RTOL, atol=ATOL)
  diff = optax.tree.norm(optax.tree.sub(through_weights, out.grad))
  # Far outside the float32 tolerance used above.
  assert diff > 1e-3 * optax.tree.norm(out.grad), diff
  assert diff > 1e3 * ATOL, diff


def test_has_aux_returns_aux():
  num_losses = 3
  losses = _make_losses(num_losses)

  def losses_with_aux(params, x, y):
    value = losses(params, x, y)
    return value, {"total": jnp.sum(value), "first_x": x[0]}

  params = _init_mlp(num_losses)
  x, y = _data(num_losses)
  state = sa.init_state(num_losses)
  with_aux = jax.jit(
      sa.softadapt_value_and_grad(losses_with_aux, has_aux=True, beta=BETA)
  )
  without_aux = jax.jit(sa.softadapt_value_and_grad(losses, beta=BETA))
  for _ in range(3):
    out = with_aux(state, params, x, y)
    ref = without_aux(state, params, x, y)
    np.testing.assert_allclose(out.aux["total"], jnp.sum(ref.losses), rtol=RTOL)
    np.testing.assert_array_equal(out.aux["first_x"], x[0])
    chex.assert_trees_all_close(
        (out.losses, out.weights, out.state, out.grad),
        (ref.losses, ref.weights, ref.state, ref.grad),
        rtol=RTOL,
        atol=ATOL,
    )
    params, state = _sgd(params, out.grad), out.state
  assert without_aux(state, params, x, y).aux is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_helper_state_matches_chain_state(variant):
  """Full opt_state in, the chain's softadapt_track records the same state."""
  num_losses, order = 3, 2
  losses = _make_losses(num_losses)
  params = _init_mlp(num_losses)
  x, y = _data(num_losses)
  settings = {"beta": BETAS[variant], "variant": variant}
  tx = optax.chain(
      sa.softadapt_track(num_losses, order=order, **settings), optax.adam(1e-2)
  )
  grad_fn = sa.softadapt_value_and_grad(losses, **settings)

  @jax.jit
  def step(params, opt_state):
    out = grad_fn(opt_state, params, x, y)
    bare = grad_fn(sa.find_softadapt_state(opt_state), params, x, y)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, losses=out.losses
    )
    return optax.apply_updates(params, updates), opt_state, out, bare

  opt_state = tx.init(params)
  for _ in range(6):
    params, opt_state, out, bare = step(params, opt_state)
    chex.assert_trees_all_equal(out, bare)
    recorded = sa.find_softadapt_state(opt_state)
    chex.assert_trees_all_equal(out.state, recorded)
    chex.assert_trees_all_equal(
        recorded, optax.tree.get(opt_state, "SoftAdaptState")
    )
  assert int(recorded.count) == 6
  np.testing.assert_allclose(recorded.history[-1], out.losses)
  _assert_not_uniform(recorded.weights)


def test_find_softadapt_state_errors():
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="no SoftAdaptState found"):
    sa.find_softadapt_state(optax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match="no SoftAdaptState found"):
    sa.find_softadapt_state(None)
  two = optax.chain(sa.softadapt_track(2), sa.softadapt_track(2))
  with pytest.raises(ValueError, match="more than one SoftAdaptState"):
    sa.find_softadapt_state(two.init(params))
  # The helper resolves its state argument the same way.
  grad_fn = sa.softadapt_value_and_grad(
      lambda p: jnp.stack([p["w"][0], p["w"][1]])
  )
  with pytest.raises(ValueError, match="no SoftAdaptState found"):
    grad_fn(optax.sgd(0.1).init(params), params)
  with pytest.raises(ValueError, match="more than one SoftAdaptState"):
    grad_fn(two.init(params), params)
  one = optax.chain(sa.softadapt_track(2), optax.sgd(0.1)).init(params)
  chex.assert_trees_all_equal(sa.find_softadapt_state(one), one[0])


def _counted_matmul(counter):
  """``x @ w`` whose backward rule reports how it is traced.

  How the backward passes are counted: ``bwd`` increments ``counter["bwd"]``
  (a Python side effect, so it counts how many times the backward rule is
  *traced*; with or without jit each distinct backward pass traces it once).
  A loop of ``K`` ``jax.grad`` calls traces it ``K`` times. ``jax.jacrev``
  traces it once, but under ``vmap`` over the ``K`` basis cotangents, i.e. a
  ``K``-times batched backward pass; to see that, the cotangent goes through a
  ``jax.custom_batching.custom_vmap`` identity whose batching rule increments
  ``counter["batched"]``. One VJP means one ``bwd`` trace per use of the
  matmul and no ``batched`` one. Only public JAX APIs are used; nothing
  depends on jaxpr internals or on how XLA later fuses the program.
  """

  @jax.custom_batching.custom_vmap
  def mark(g):
    return g

  @mark.def_vmap
  def _mark_batched(axis_size, in_batched, g):
    del axis_size
    counter["batched"] += 1
    return g, in_batched[0]

  @jax.custom_vjp
  def matmul(x, w):
    return x @ w

  def fwd(x, w):
    return x @ w, (x, w)

  def bwd(residuals, g):
    counter["bwd"] += 1
    x, w = residuals
    g = mark(g)
    return g @ w.T, x.T @ g

  matmul.defvjp(fwd, bwd)
  return matmul


@pytest.mark.parametrize("num_losses", [2, 3, 5])
def test_one_backward_pass(num_losses):
  counter = collections.Counter()
  matmul = _counted_matmul(counter)
  scales = jnp.linspace(0.5, 2.0, num_losses)

  def losses(params, x, y):
    h = jnp.tanh(matmul(x, params["dense1"]["w"]) + params["dense1"]["b"])
    pred = matmul(h, params["dense2"]["w"]) + params["dense2"]["b"]
    return scales * jnp.mean((pred - y) ** 2, axis=0)

  def count_traced(fn, *args):
    """Backward-rule traces of one jit trace of ``fn`` (nothing compiled)."""
    counter.clear()
    jax.jit(fn).trace(*args)
    return dict(counter)

  params = _init_mlp(num_losses)
  x, y = _data(num_losses)
  state = sa.init_state(num_losses)
  for _ in range(3):  # through warm-up and after it
    # A new function each time, so that jit's cache cannot hide a trace.
    grad_fn = sa.softadapt_value_and_grad(losses, beta=BETA)
    # Two matmuls, each differentiated once, never batched: one VJP.
    assert count_traced(grad_fn, state, params, x, y) == {"bwd": 2}
    # Eagerly too (each op runs as it is traced).
    counter.clear()
    state = grad_fn(state, params, x, y).state
    assert counter == {"bwd": 2}, counter
  assert int(state.count) == 3

  # The K-backward-pass routes, for contrast: jacrev runs each backward rule
  # once but batched K-fold; a loop of jax.grad runs each K times.
  jacrev = lambda p: jax.jacrev(losses)(p, x, y)
  assert count_traced(jacrev, params) == {"bwd": 2, "batched": 2}
  grad_loop = lambda p: [
      jax.grad(lambda q, k=k: losses(q, x, y)[k])(p) for k in range(num_losses)
  ]
  assert count_traced(grad_loop, params) == {"bwd": 2 * num_losses}


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_losses(param_dtype):
  """The cotangent takes the losses' dtype; the direction is finite."""
  num_losses = 3
  seen = {}

  @jax.custom_vjp
  def record_cotangent(v):
    return v

  def fwd(v):
    return v, None

  def bwd(_, g):
    seen["dtype"] = g.dtype
    return (g,)

  record_cotangent.defvjp(fwd, bwd)
  f32_losses = _make_losses(num_losses)

  def losses(params, x, y):
    return record_cotangent(f32_losses(params, x, y).astype(jnp.bfloat16))

  params = optax.tree.cast(_init_mlp(num_losses), param_dtype)
  x, y = _data(num_losses)
  x, y = x.astype(param_dtype), y.astype(param_dtype)
  grad_fn = jax.jit(sa.softadapt_value_and_grad(losses, beta=BETA))
  state, params = _warm_up(grad_fn, sa.init_state(num_losses), params, x, y)
  out = grad_fn(state, params, x, y)

  assert seen["dtype"] == jnp.bfloat16
  assert out.losses.dtype == jnp.bfloat16
  assert out.state.history.dtype == jnp.float32
  assert out.weights.dtype == jnp.float32
  _assert_not_uniform(out.weights)
  chex.assert_tree_all_finite(out.grad)
  chex.assert_trees_all_equal_dtypes(out.grad, params)
  reference = _contract(
      out.weights.astype(jnp.bfloat16),
      jax.jit(jax.jacrev(losses))(params, x, y),
  )
  chex.assert_trees_all_close(
      optax.tree.cast(out.grad, jnp.float32),
      optax.tree.cast(reference, jnp.float32),
      rtol=2e-2,
      atol=2e-2,
  )
