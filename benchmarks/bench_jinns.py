"""Benchmark: the same PINN trained with jinns' SoftAdapt and with ours.

jinns (PyPI ``jinns``) is the JAX PINN library that ships a SoftAdapt
(``LossPDEStatio(update_weight_method="soft_adapt")``): the ratio rule of
NVIDIA PhysicsNeMo, ``w = softmax(L(t) / (L(t-1) + 1e-6))``, with each loss
term's gradient computed separately (``jax.jacrev`` per term) and then
weighted. Both libraries train the same problem here:

- 2D Poisson ``-Lap u = f`` on the unit square, ``u = 0`` on the boundary,
  exact solution ``sin(pi x) sin(pi y)``;
- the same network and initial weights: jinns' ``PINN_MLP`` (tanh,
  2 -> 64 -> 64 -> 64 -> 1), its weights copied into a plain-JAX MLP for ours;
- the same points: jinns' ``CubicMeshPDEStatio`` draws 512 interior points
  and 128 boundary points (32 per side), full batch; ours uses those arrays;
- the same losses: the mean squared residual (Laplacian by
  forward-over-forward ``jvp``, the same function in both) and jinns'
  Dirichlet loss (the sum over the 4 sides of the mean squared ``u``); the
  script checks that both give the same initial losses;
- the same optimizer (``optax.adam(1e-3)``) and number of steps.

Variants: jinns with ``soft_adapt`` and with fixed weights (no update
method: jinns still takes one gradient per term), ours with SoftAdapt
(``sa.softadapt(2, beta=0.1, variant="loss_weighted")``: the paper's rule),
ours with fixed weights (``jax.value_and_grad`` of the sum), and ours with
``sa.ratio_softadapt(2, **sa.RATIO_SOFTADAPT_CONVENTIONS["jinns"])``
(temperature 1, weights summing to 1, eps 1e-6): the very rule jinns runs.
Our rules run through the library's one route
(``sa.weighted_value_and_grad(fun, rule)`` + ``sa.track_weights(rule)``).
Time per step is jinns' own "Training took" figure (compilation excluded)
and, for ours, the wall time of the compiled, scanned loop; the variants are
run interleaved (``--reps`` rounds, the order flipped every other round;
medians). Final error: relative L2 error against the exact solution on a
64 x 64 grid.

jinns needs its own environment (it pins ``pytest`` and ``pyright`` as
runtime dependencies)::

  cd /work/main && .venv-bench/bin/python benchmarks/bench_jinns.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
import contextlib
import io
import re
import time
from typing import Any

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

LEARNING_RATE = 1e-3
BETA = 0.1
VARIANT = "loss_weighted"


def laplacian(f, x: jax.Array) -> jax.Array:
  """``f_xx + f_yy`` of a scalar ``f`` at ``x``, by forward-over-forward."""
  def d2(e):
    du = lambda z: jax.jvp(f, (z,), (e,))[1]
    return jax.jvp(du, (x,), (e,))[1]
  return d2(jnp.array([1.0, 0.0])) + d2(jnp.array([0.0, 1.0]))


def build_jinns(width: int, n_interior: int, n_boundary: int, seed: int):
  """jinns' network, data and a loss factory; returns them and the points."""
  import equinox as eqx
  import jinns

  k_net, k_data, k_solve = jax.random.split(jax.random.PRNGKey(seed), 3)
  eqx_list = ((eqx.nn.Linear, 2, width), (jax.nn.tanh,),
              (eqx.nn.Linear, width, width), (jax.nn.tanh,),
              (eqx.nn.Linear, width, width), (jax.nn.tanh,),
              (eqx.nn.Linear, width, 1))
  u, nn_params = jinns.nn.PINN_MLP.create(key=k_net, eqx_list=eqx_list,
                                          eq_type="PDEStatio")
  data = jinns.data.CubicMeshPDEStatio(
      key=k_data, n=n_interior, nb=n_boundary, dim=2, min_pts=(0.0, 0.0),
      max_pts=(1.0, 1.0), method="uniform")
  params = jinns.parameters.Params(nn_params=nn_params, eq_params={})

  class Poisson(jinns.loss.PDEStatio):
    def equation(self, x, u, params):
      return (laplacian(lambda z: u(z, params)[0], x)
              + C.poisson_source(x))[None]

  def make_loss(method: str | None):
    return jinns.loss.LossPDEStatio(
        u=u, dynamic_loss=Poisson(),
        boundary_condition=jinns.loss.Dirichlet(),
        loss_weights=jinns.loss.LossWeightsPDEStatio(dyn_loss=1.0,
                                                     boundary_loss=1.0),
        update_weight_method=method, params=params)

  # Our MLP format: w = weight.T. The hidden layers sit at even indices.
  linears = [layer for layer in nn_params.nn_params.layers
             if layer is not None] if hasattr(nn_params, "nn_params") else [
                 layer for layer in nn_params.layers if layer is not None]
  ours = [{"w": jnp.asarray(lin.weight).T, "b": jnp.asarray(lin.bias)}
          for lin in linears]
  _, batch = data.get_batch()
  interior = jnp.asarray(batch.domain_batch)  # [n, 2]
  facets = jnp.moveaxis(jnp.asarray(batch.border_batch), -1, 0)  # [4, nb/4, 2]
  return {"jinns": jinns, "u": u, "data": data, "params": params,
          "make_loss": make_loss, "key": k_solve, "ours": ours,
          "interior": interior, "facets": facets, "batch": batch}


def our_losses(params, interior, facets):
  """[dyn_loss, boundary_loss], as jinns defines them."""
  lap = jax.vmap(lambda z: laplacian(lambda w: C.pinn_u(params, w), z))(interior)
  dyn = jnp.mean((lap + C.poisson_source(interior)) ** 2)
  # One vmap over all boundary points, then the mean per side (a vmap over
  # sides of a vmap over points runs ~2x slower on XLA:CPU).
  ub = jax.vmap(lambda z: C.pinn_u(params, z))(facets.reshape(-1, 2))
  ub = ub.reshape(facets.shape[:2])  # [4, m]
  return jnp.stack([dyn, jnp.sum(jnp.mean(ub**2, axis=1))])


# jinns' rule, exactly: sa.ratio_softadapt in jinns' conventions.
JINNS_RULE = "sa.ratio_softadapt(2, **sa.RATIO_SOFTADAPT_CONVENTIONS['jinns'])"


def jinns_rule() -> sa.LossWeighting:
  return sa.ratio_softadapt(2, **sa.RATIO_SOFTADAPT_CONVENTIONS["jinns"])


def softadapt_rule() -> sa.LossWeighting:
  return sa.softadapt(2, beta=BETA, variant=VARIANT)


def make_our_run(setup: dict, steps: int, mode: str, rule: Any = None):
  """A compiled ``run() -> (params, weights[steps])``: ``steps`` Adam steps.

  ``mode``: ``"rule"`` (``rule`` through the library's route) or ``"fixed"``
  (``jax.value_and_grad`` of the sum, no library).
  """
  interior, facets = setup["interior"], setup["facets"]
  loss_fn = lambda p: our_losses(p, interior, facets)
  params0 = setup["ours"]
  if mode == "fixed":
    tx = optax.adam(LEARNING_RATE)

    def step_fixed(carry, _):
      params, opt_state = carry
      grad = jax.grad(lambda p: jnp.sum(loss_fn(p)))(params)
      updates, opt_state = tx.update(grad, opt_state, params)
      return ((optax.apply_updates(params, updates), opt_state),
              jnp.ones(2, jnp.float32))
    step = step_fixed
    carry0 = (params0, tx.init(params0))
  elif mode == "rule":  # the library's one route
    tx = optax.chain(sa.track_weights(rule), optax.adam(LEARNING_RATE))
    grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

    def step_rule(carry, _):
      params, opt_state = carry
      out = grad_fn(opt_state, params)
      updates, opt_state = tx.update(out.grad, opt_state, params,
                                     weighting_state=out.state)
      return (optax.apply_updates(params, updates), opt_state), out.weights
    step = step_rule
    carry0 = (params0, tx.init(params0))
  else:
    raise ValueError(mode)

  def run(carry):
    carry, ws = jax.lax.scan(step, carry, None, length=steps)
    return carry[0], ws

  compiled = jax.jit(run).lower(carry0).compile()
  return lambda: compiled(carry0)


def jinns_solve(setup: dict, steps: int, method: str | None):
  """Runs ``jinns.solve``; returns (params, weights, training seconds)."""
  jinns = setup["jinns"]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    out = jinns.solve(
        n_iter=steps, init_params=setup["params"], data=setup["data"],
        loss=setup["make_loss"](method), optimizer=optax.adam(LEARNING_RATE),
        key=setup["key"], print_loss_every=10**9)
  m = re.search(r"Training took\s+([0-9.eE+-]+)", buf.getvalue())
  if m is None:
    raise RuntimeError("no 'Training took' in jinns' output:\n" + buf.getvalue())
  weights = out[7]
  w = (None if weights is None else
       np.stack([np.asarray(weights.dyn_loss), np.asarray(weights.boundary_loss)],
                axis=1))
  return out[0], w, float(m.group(1))


def jinns_rel_l2(setup: dict, params) -> float:
  n = 64
  g = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
  xy = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  u = jax.vmap(lambda z: setup["u"](z, params)[0])(xy)
  exact = C.poisson_exact(xy)
  return float(jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--n-interior", type=int, default=512)
  parser.add_argument("--n-boundary", type=int, default=128)
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--tiny", action="store_true",
                      help="a smoke run: tiny network, 20 steps, 1 round")
  args = parser.parse_args(argv)
  if args.tiny:
    args.steps, args.reps, args.width = 20, 1, 8
    args.n_interior, args.n_boundary = 16, 8

  setup = build_jinns(args.width, args.n_interior, args.n_boundary, seed=0)
  C.print_header(
      "jinns' SoftAdapt versus ours on the same PINN",
      f"2D Poisson, tanh 2-{args.width}-{args.width}-{args.width}-1, "
      f"{args.n_interior} interior + {args.n_boundary} boundary points (full "
      f"batch), adam({LEARNING_RATE}), {args.steps} steps, {args.reps} "
      "interleaved rounds", packages=("jinns", "equinox"))

  # Same problem: the initial losses agree.
  loss0 = setup["make_loss"](None)
  _, terms = loss0.evaluate(setup["params"], setup["batch"])
  j0 = np.array([float(jax.tree.leaves(terms.dyn_loss)[0]),
                 float(terms.boundary_loss)])
  o0 = np.asarray(our_losses(setup["ours"], setup["interior"], setup["facets"]))
  init_diff = float(np.max(np.abs(j0 - o0) / np.abs(j0)))

  ours = {"ours, SoftAdapt (loss-weighted, beta 0.1)":
          make_our_run(setup, args.steps, "rule", softadapt_rule()),
          "ours, fixed weights (sum)": make_our_run(setup, args.steps, "fixed"),
          "ours, ratio rule in jinns' conventions":
          make_our_run(setup, args.steps, "rule", jinns_rule())}
  jinns_variants = {"jinns, soft_adapt": "soft_adapt",
                    "jinns, fixed weights": None}
  names = [*jinns_variants, *ours]
  last: dict[str, Any] = {}

  def timer(name):
    def run():
      if name in jinns_variants:
        params, w, seconds = jinns_solve(setup, args.steps, jinns_variants[name])
        last[name] = (params, w)
        return seconds / args.steps
      fn = ours[name]
      C.time_call(fn)  # warm up (compiled already); blocks
      t0 = time.perf_counter()
      last[name] = jax.block_until_ready(fn())
      return (time.perf_counter() - t0) / args.steps
    return run

  times = C.interleaved({n: timer(n) for n in names}, args.reps)

  errors, final_w = {}, {}
  for name in names:
    if name in jinns_variants:
      params, w = last[name]
      errors[name] = jinns_rel_l2(setup, params)
      final_w[name] = None if w is None else w[-1]
    else:
      params, w = last[name]
      errors[name] = float(C.pinn_rel_l2(params))
      final_w[name] = np.asarray(w[-1])

  base = times["jinns, soft_adapt"]
  print(f"Initial losses, jinns vs ours: max relative difference "
        f"{init_diff:.1e} (jinns {j0.tolist()}).\n")
  print("Time per training step (median over the rounds; jinns: its own "
        "'Training took' over the steps, compile excluded; ours: the "
        "compiled `lax.scan` loop), steps per second, speedup over jinns' "
        "SoftAdapt (median of the per-round ratios), relative L2 error "
        f"after {args.steps} steps and the last weights (dyn, boundary).\n")
  print("| variant | ms/step | steps/s | speedup vs jinns soft_adapt | noise | "
        "rel. L2 error | last weights |")
  print("|---|---:|---:|---:|---:|---:|---|")
  results: dict[str, Any] = {"init_diff": init_diff}
  for name in names:
    t = C.median(times[name])
    speed = C.paired(base, times[name])
    w = final_w[name]
    ws = "-" if w is None else ", ".join(f"{x:.3g}" for x in w)
    results[name] = {"step": t, "speedup": speed, "rel_l2": errors[name]}
    print(f"| {name} | {t * 1e3:.3f} | {1 / t:,.0f} | {speed:.2f}x | "
          f"{C.spread(times[name]) * 100:.1f}% | {errors[name]:.2e} | "
          f"{ws} |")
  print(f"\nOurs with jinns' rule: `{JINNS_RULE}`.")
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
