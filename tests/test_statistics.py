"""The routes that compute per-component gradient statistics, against each other.

Unrolled ``K`` gradients, ``lax.map`` of the VJP, ``jax.jacrev`` and the
stacked gradients of ``combine_grads`` give the same statistics (to float32
rounding) on split losses (each component its own sub-computation, as a
PINN's terms) and on shared ones (one trunk for every component); the
direction is ``jacrev``-then-contract; the statistics are computed only on
the steps the cadence asks for, with the cadence unbatched under ``vmap``;
under a data axis they are those of the averaged gradients.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa
from softadapt_jax import _statistics as st

K = 3


def _mlp(key, sizes=(2, 8, 8, 1)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": 0.1 * jnp.ones(b)}
      for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def _net(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


X = [jax.random.normal(jax.random.key(i), (16, 2)) for i in range(K)]


def _split(params):
  """Each component on its own points (a PINN's residual, boundary, data)."""
  return jnp.stack([
      jnp.mean(_net(params, X[0]) ** 2),
      10.0 * jnp.mean((_net(params, X[1]) - 1.0) ** 2),
      0.1 * jnp.mean(jnp.sin(_net(params, X[2])) ** 2),
  ])


def _shared(params):
  """Every component from one forward pass through one trunk."""
  out = _net(params, X[0])[:, 0]
  return jnp.stack([jnp.mean(out**2), 10.0 * jnp.mean((out - 1) ** 2), jnp.mean(out)])


SPECS = {
    "max/mean": st.GradientStatistics(
        per_component=lambda g: {"max": st.max_abs(g), "mean": st.mean_abs(g)}
    ),
    "std on weight matrices": st.GradientStatistics(
        per_component=lambda g: {"sq": st.squared_norm(g), "sum": st.total(g)},
        wrt=st.weight_matrices,
    ),
    "gramian": st.GradientStatistics(gramian=True),
    "norm and gramian on the last layer": st.GradientStatistics(
        per_component=lambda g: {"norm": jnp.sqrt(st.squared_norm(g))},
        gramian=True,
        wrt=lambda path, leaf: path.startswith("[2]"),
    ),
}


@pytest.mark.parametrize("fun", [_split, _shared], ids=["split", "shared"])
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_every_route_gives_the_same_statistics(fun, spec_name):
  spec = SPECS[spec_name]
  params = _mlp(jax.random.key(7))
  routes = {
      route: jax.jit(
          lambda p, route=route: st.from_function(spec, fun, p, K, route=route)
      )(params)
      for route in st.GRADIENT_ROUTES
  }
  jac = jax.jacrev(fun)(params)
  idx = st.selected_indices(spec, params)
  leaves = jax.tree.leaves(jac)
  routes["stacked"] = st.from_stacked(spec, [leaves[i] for i in idx])
  # By hand, from the flattened per-component gradients.
  flat = np.concatenate(
      [np.asarray(leaves[i]).reshape(K, -1) for i in idx], axis=1
  ).astype(np.float64)
  hand = {}
  if "max" in routes["stacked"]:
    hand = {"max": np.abs(flat).max(1), "mean": np.abs(flat).mean(1)}
  if "sq" in routes["stacked"]:
    hand = {"sq": (flat**2).sum(1), "sum": flat.sum(1)}
  if "norm" in routes["stacked"]:
    hand = {"norm": np.linalg.norm(flat, axis=1)}
  if spec.gramian:
    hand["gramian"] = flat @ flat.T
  for route, stats in routes.items():
    assert set(stats) == set(hand), route
    for key, value in hand.items():
      np.testing.assert_allclose(
          stats[key], value, rtol=2e-5, atol=1e-7, err_msg=f"{route}: {key}"
      )


@pytest.mark.parametrize("route", st.GRADIENT_ROUTES)
@pytest.mark.parametrize("fun", [_split, _shared], ids=["split", "shared"])
def test_gradient_rules_direction_is_jacrev_then_contract(route, fun):
  params = _mlp(jax.random.key(3))
  for rule in (
      sa.grad_balance(K, update_every=1, after_step=False),
      sa.gradnorm(K, learning_rate=0.1),
  ):
    grad_fn = jax.jit(sa.weighted_value_and_grad(fun, rule, gradients=route))
    state, out = rule.init(), None
    for _ in range(3):
      out = grad_fn(state, params)
      state = out.state
    assert out is not None
    expected = jax.tree.map(
        lambda g, w=out.weights: jnp.tensordot(w, g, axes=1),
        jax.jacrev(fun)(params),
    )
    chex.assert_trees_all_close(out.grad, expected, rtol=1e-5, atol=1e-7)


def test_every_route_gives_the_same_weights_and_state():
  params = _mlp(jax.random.key(5))
  rule = sa.grad_balance(K, **sa.GRAD_BALANCE_CONVENTIONS["pinnacle"])
  states = {}
  for route in st.GRADIENT_ROUTES:
    grad_fn = jax.jit(sa.weighted_value_and_grad(_split, rule, gradients=route))
    state = rule.init()
    for _ in range(4):
      state = grad_fn(state, params).state
    states[route] = state
  tx = sa.combine_grads(rule)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(4):
    _, state = update(jax.jacrev(_split)(params), state, params, losses=_split(params))
  states["stacked"] = state
  for state in states.values():
    chex.assert_trees_all_close(state, states["unrolled"], rtol=1e-5)
  assert np.ptp(np.asarray(states["unrolled"].weights)) > 0


def test_statistics_only_on_due_steps_and_unbatched_under_vmap():
  """The K gradients run in a cond on the clock; vmap keeps it a cond."""
  params = _mlp(jax.random.key(1))
  calls = []

  def counted(p):
    calls.append(1)
    return _split(p)

  def run(momentum):
    rule = sa.grad_balance(K, momentum=momentum, update_every=4, after_step=False)
    tx = optax.chain(sa.track_weights(rule), optax.sgd(1e-2))
    grad_fn = sa.weighted_value_and_grad(counted, rule)

    def body(carry, _):
      p, opt_state = carry
      out = grad_fn(opt_state, p)
      updates, opt_state = tx.update(
          out.grad, opt_state, p, weighting_state=out.state
      )
      return (optax.apply_updates(p, updates), opt_state), out.weights

    return jax.lax.scan(body, (params, tx.init(params)), length=9)[1]

  jaxpr = jax.make_jaxpr(jax.vmap(run))(jnp.array([0.5, 0.9]))
  text = str(jaxpr)
  assert " cond[" in text, "the statistics branch became a select under vmap"
  weights = jax.jit(jax.vmap(run))(jnp.array([0.5, 0.9]))
  # Updated on steps 0, 4, 8 only; held in between.
  w = np.asarray(weights)
  for t in (1, 2, 3, 5, 6, 7):
    np.testing.assert_array_equal(w[:, t], w[:, t - 1])
  assert not np.allclose(w[:, 4], w[:, 3])
  assert not np.allclose(w[0], w[1])  # the two momenta differ


def test_under_a_data_axis_the_statistics_are_those_of_the_mean_gradient():
  """Replicas with their own data: the statistic of the averaged gradient."""
  params = _mlp(jax.random.key(2))
  data = jnp.stack([X[0] * 0.5, X[0] * 1.5])  # two replicas' batches

  def local(p, x):
    out = _net(p, x)[:, 0]
    return jnp.stack(
        [jnp.mean(out**2), jnp.mean((out - 1) ** 2), jnp.mean(jnp.sin(out))]
    )

  def global_(p):
    return (local(p, data[0]) + local(p, data[1])) / 2

  for route in st.GRADIENT_ROUTES:
    rule_dp = sa.grad_balance(K, update_every=1, after_step=False, axis_name="data")
    rule = sa.grad_balance(K, update_every=1, after_step=False)
    out_dp = jax.jit(jax.vmap(
        lambda x, r=route: sa.weighted_value_and_grad(local, rule_dp, gradients=r)(
            rule_dp.init(), params, x
        ),
        axis_name="data",
    ))(data)
    out = jax.jit(sa.weighted_value_and_grad(global_, rule, gradients=route))(
        rule.init(), params
    )
    np.testing.assert_array_equal(out_dp.weights[0], out_dp.weights[1])
    np.testing.assert_allclose(out_dp.weights[0], out.weights, rtol=1e-5)
    chex.assert_trees_all_close(
        jax.tree.map(lambda g: g[0], out_dp.grad), out.grad, rtol=1e-5, atol=1e-7
    )


def test_a_rule_without_statistics_gets_none_and_one_with_them_needs_them():
  rule = sa.grad_balance(K)
  with pytest.raises(TypeError, match="needs statistics of the per-component"):
    rule.update(rule.init(), jnp.ones(K))
  with pytest.raises(ValueError, match=r"`statistics` must have the keys"):
    rule.update(rule.init(), jnp.ones(K), {"norm": jnp.ones(K)})
  with pytest.raises(TypeError, match="takes no `statistics`"):
    sa.softadapt(K).update(sa.softadapt(K).init(), jnp.ones(K), {"x": jnp.ones(K)})
  with pytest.raises(ValueError, match="`gradients` must be one of"):
    sa.weighted_value_and_grad(_split, rule, gradients="loop")
  nothing = sa.grad_balance(K, wrt=lambda path, leaf: False)
  with pytest.raises(ValueError, match="select no floating parameter"):
    sa.weighted_value_and_grad(_split, nothing)(nothing.init(), _mlp(jax.random.key(0)))


def test_non_finite_statistics_skip_the_step():
  rule = sa.grad_balance(K, update_every=1, after_step=False)
  state = rule.init()
  stats = {"max": jnp.array([1.0, jnp.nan, 1.0]), "mean": jnp.ones(K)}
  w, new = rule.update(state, jnp.ones(K), stats)
  assert int(new.num_skipped) == 1
  assert int(new.clock) == 1  # the clock counts every call
  np.testing.assert_array_equal(w, state.weights)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jaxlib: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def test_named_losses_give_each_gradient_its_own_computation():
  """With named losses the unrolled route differentiates each loss before the
  stack: the same statistics, direction and weights as the stacked vector,
  and XLA drops the other losses' computations (fewer flops), which it cannot
  do through a stacked vector's dense cotangent."""
  k = 4
  key = jax.random.key(3)
  params = {"w1": jax.random.normal(key, (2, 16)),
            "w2": jax.random.normal(jax.random.fold_in(key, 1), (16,))}
  points = jax.random.normal(jax.random.fold_in(key, 2), (k, 32, 2))

  def u(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  def part(p, j):  # second derivatives on its own points, as a PINN term
    lap = jax.vmap(lambda x: jnp.trace(jax.hessian(lambda y: u(p, y))(x)))
    return jnp.mean((lap(points[j]) + 1.0) ** 2)

  names = [f"strip{j}" for j in range(k)]
  named = sa.grad_balance(
      names, update_every=1, after_step=False, weights_only=False)
  stacked = sa.grad_balance(
      k, update_every=1, after_step=False, weights_only=False)
  f_named = jax.jit(sa.weighted_value_and_grad(
      lambda p: {n: part(p, j) for j, n in enumerate(names)}, named))
  f_stacked = jax.jit(sa.weighted_value_and_grad(
      lambda p: jnp.stack([part(p, j) for j in range(k)]), stacked))
  a = f_named(named.init(), params)
  b = f_stacked(stacked.init(), params)
  np.testing.assert_allclose(
      np.stack([a.weights[n] for n in names]), b.weights, rtol=1e-5)
  chex.assert_trees_all_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
  flops_named = _flops(f_named.lower(named.init(), params).compile())
  flops_stacked = _flops(f_stacked.lower(stacked.init(), params).compile())
  assert flops_named < 0.8 * flops_stacked, (flops_named, flops_stacked)
