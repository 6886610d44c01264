"""Benchmark: one backward pass versus per-component gradients.

The SoftAdapt direction ``h = sum_k alpha_k grad f_k`` computed four ways, on
the same model, batch and weights, timed side by side (interleaved ABCD...,
the order flipped every other repeat; medians of the repeats):

- ``one-VJP``: ours, ``sa.weighted_value_and_grad(f, rule)``: one forward,
  one backward pass with the weights as the cotangent (``K`` gradients never
  formed);
- ``jacrev``: ``jax.jacrev`` of the loss vector (``K`` stacked gradients:
  one forward, ``K`` vmapped backward passes), then contracted with the
  weights;
- ``K x grad``: a loop of ``K`` ``jax.value_and_grad`` of ``losses[k]``,
  each differentiating the full loss function (what one does given a function
  that returns the loss vector), then the weighted sum;
- ``K x grad (own batch)``: a loop of ``K`` ``jax.value_and_grad``, each of a
  function that computes component ``k`` alone on its own batch (only where
  the components have separate batches): the best a per-component loop can
  do.

Every variant computes the losses, the weights of the same rule
(``sa.softadapt(K, beta=0.1, variant="loss_weighted")``, order 1, from the same
recorded state: ``rule.update``) and the direction, jitted as one program. Problems:

- (a) shared forward pass: ``mlp``, K regression heads on one trunk
  (32 -> 256 -> 256 -> 256 -> K, GELU, batch 256): every component needs the
  whole forward pass;
- (b) one batch per component: ``pinn``, the 2D Poisson PINN of
  ``bench_step.py`` (tanh 2 -> 64 -> 64 -> 64 -> 1, Laplacian by
  forward-over-forward ``jvp``; ``K - 1`` residual terms on strips of 512
  interior points + one boundary term on 128 points), and ``mlp-split``, the
  MLP with head ``k`` fitted on its own batch of 64 points (so the total work
  grows with K).

Memory is XLA's buffer assignment of each compiled program
(``compiled.memory_analysis()``): ``temp`` is the scratch memory the program
allocates beyond its arguments and outputs (live intermediates, with buffers
reused once dead), so it is the peak working memory of the call. Also
printed: compile time, and the largest difference between each direction and
the one-VJP direction (the four compute the same vector).

Run::

  cd /work/main && .venv/bin/python benchmarks/bench_grads.py

``--tiny`` is a smoke run on tiny models; ``--single-thread`` as in
``bench_step.py``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
import time
from collections.abc import Callable
from typing import Any

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp
import numpy as np

import softadapt_jax as sa

BETA = 0.1
VARIANT = "loss_weighted"


def make_mlp_split_problem(num_losses: int, batch: int = 64, d_in: int = 32,
                           width: int = 256, depth: int = 3,
                           seed: int = 0) -> C.Problem:
  """K heads on one trunk; head ``k`` is fitted on its own batch."""
  kp, kx, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = C.init_mlp(kp, [d_in, *[width] * depth, num_losses])
  a = jax.random.normal(ka, (d_in, num_losses), jnp.float32) / np.sqrt(d_in)
  freqs = jnp.linspace(0.5, 3.0, num_losses, dtype=jnp.float32)
  x = jax.random.normal(kx, (num_losses, batch, d_in), jnp.float32)
  # t[k] = sin(freq_k <a_k, x_k>): [K, batch]
  t = jnp.sin(freqs[:, None] * jnp.einsum("kbd,dk->kb", x, a))

  def component_loss(params, x_k, t_k, k):
    y = C.apply_mlp(params, x_k, jax.nn.gelu)[:, k]
    return jnp.mean((y - t_k) ** 2)

  def loss_vec_fn(params, batch):
    x, t = batch
    y = C.apply_mlp(params, x.reshape(-1, d_in), jax.nn.gelu)
    y = y.reshape(num_losses, batch_size, num_losses)
    y = jnp.diagonal(y, axis1=0, axis2=2).T  # [K, batch]: head k on batch k
    return jnp.mean((y - t) ** 2, axis=1)

  batch_size = batch
  comps = tuple(
      (lambda params, b, k=k: component_loss(params, b[0][k], b[1][k], k))
      for k in range(num_losses))
  return C.Problem("mlp-split", num_losses, loss_vec_fn, params, None, (x, t),
                   comps)


def make_problem(name: str, k: int, tiny: bool) -> C.Problem:
  if name == "mlp":
    p = (C.make_mlp_problem(k, 1, batch=8, d_in=4, width=8) if tiny
         else C.make_mlp_problem(k, 1))
    # One batch, held fixed.
    return p._replace(fixed=C.batch_at(p, 0), batches=None)
  if name == "mlp-split":
    if tiny:
      return make_mlp_split_problem(k, batch=4, d_in=4, width=8, depth=1)
    return make_mlp_split_problem(k)
  if name == "pinn":
    if tiny:
      return C.make_pinn_problem(k, n_interior=4 * (k - 1), n_boundary=4,
                                 width=8, depth=1)
    return C.make_pinn_problem(k)
  raise ValueError(name)


def _weighted_sum(weights: jax.Array, grads: list[Any]) -> Any:
  return jax.tree.map(
      lambda *gs: sum(weights[k] * g for k, g in enumerate(gs)), *grads)


def make_rule(num_losses: int) -> sa.LossWeighting:
  return sa.softadapt(num_losses, beta=BETA, variant=VARIANT)


def directions(problem: C.Problem) -> dict[str, Callable[..., Any]]:
  """name -> ``f(state, params, batch) -> (direction, losses)``."""
  f, k_num = problem.loss_vec_fn, problem.num_losses
  rule = make_rule(k_num)
  weights_fn = lambda state, losses: rule.update(state, losses)[0]
  vjp_route = sa.weighted_value_and_grad(f, rule)

  def one_vjp(state, params, batch):
    out = vjp_route(state, params, batch)
    return out.grad, out.losses

  def jacrev(state, params, batch):
    jac, losses = jax.jacrev(lambda p: (f(p, batch), f(p, batch)),
                             has_aux=True)(params)
    w = weights_fn(state, losses)
    return jax.tree.map(lambda j: jnp.tensordot(w, j, axes=1), jac), losses

  def loop_full(state, params, batch):
    vals, grads = [], []
    for k in range(k_num):
      v, g = jax.value_and_grad(lambda p, k=k: f(p, batch)[k])(params)
      vals.append(v)
      grads.append(g)
    losses = jnp.stack(vals)
    return _weighted_sum(weights_fn(state, losses), grads), losses

  out = {"one-VJP": one_vjp, "jacrev": jacrev, "K x grad": loop_full}
  if problem.component_fns is not None:

    def loop_own(state, params, batch):
      vals, grads = [], []
      for comp in problem.component_fns:
        v, g = jax.value_and_grad(comp)(params, batch)
        vals.append(v)
        grads.append(g)
      losses = jnp.stack(vals)
      return _weighted_sum(weights_fn(state, losses), grads), losses

    out["K x grad (own batch)"] = loop_own
  return out


def bench_problem(problem: C.Problem, reps: int, min_time: float):
  """Compiles, checks and times every variant on one problem."""
  batch = problem.fixed
  rule = make_rule(problem.num_losses)
  state = rule.init()
  # A recorded history, so that the weights are not the warm-up ones.
  losses0 = jax.jit(problem.loss_vec_fn)(problem.params, batch)
  _, state = rule.update(state, losses0 * 1.1)
  args = (state, problem.params, batch)
  compiled, compile_s, mem = {}, {}, {}
  for name, fn in directions(problem).items():
    t0 = time.perf_counter()
    compiled[name] = jax.jit(fn).lower(*args).compile()
    compile_s[name] = time.perf_counter() - t0
    mem[name] = C.memory(compiled[name])
  ref = compiled["one-VJP"](*args)
  diff = {}
  for name, c in compiled.items():
    out = c(*args)
    d = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), out[0], ref[0])
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ref[0]))
    diff[name] = max(float(x) for x in jax.tree.leaves(d)) / scale
  # Calls per timed sample: enough for ``min_time`` seconds of the fastest.
  C.time_call(compiled["one-VJP"], args)
  t1 = C.time_call(compiled["one-VJP"], args)
  calls = max(1, int(min_time / max(t1, 1e-6)))

  def timer(c):
    def run():
      t0 = time.perf_counter()
      out = None
      for _ in range(calls):
        out = c(*args)
      jax.block_until_ready(out)
      return (time.perf_counter() - t0) / calls
    return run

  for c in compiled.values():
    C.time_call(c, args)
  times = C.interleaved({n: timer(c) for n, c in compiled.items()}, reps)
  return times, mem, compile_s, diff


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--tiny", action="store_true",
                      help="tiny models, 2 repeats (a smoke test)")
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16])
  parser.add_argument("--problems", nargs="+",
                      default=["mlp", "mlp-split", "pinn"],
                      choices=["mlp", "mlp-split", "pinn"])
  parser.add_argument("--reps", type=int, default=None)
  parser.add_argument("--min-time", type=float, default=None,
                      help="seconds of one-VJP calls per timed sample")
  args = parser.parse_args(argv)
  reps = args.reps or (2 if args.tiny else 10)
  min_time = args.min_time or (0.0 if args.tiny else 0.05)

  C.print_header(
      "One backward pass versus per-component gradients",
      f"variant={VARIANT}, beta={BETA}, order=1, {reps} interleaved "
      f"repeats, >= {min_time} s of one-VJP calls per sample"
      + (", tiny models" if args.tiny else ""))
  print("Time per direction (losses + weights + `h`), microseconds, median "
        "over the repeats; `x slower` = variant / one-VJP (median of the "
        "per-repeat ratios); `goal` = 0.7 K. Memory: XLA `temp` buffer "
        "(MiB), the program's peak scratch memory beyond its arguments and "
        "outputs. `rel diff`: max |h - h_one-VJP| / max |h_one-VJP|.\n")
  print("| problem | K | variant | us | x slower | goal 0.7K | temp MiB | "
        "output MiB | compile s | rel diff |")
  print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
  results: dict[Any, Any] = {}
  for pname in args.problems:
    for k in args.ks:
      if pname == "pinn" and k < 2:
        continue
      times, mem, comp, diff = bench_problem(
          make_problem(pname, k, args.tiny), reps, min_time)
      base = times["one-VJP"]
      for name, t in times.items():
        ratio = C.paired(t, base)
        results[pname, k, name] = {"time": C.median(t), "ratio": ratio,
                                   "temp": mem[name]["temp"],
                                   "diff": diff[name]}
        goal = "" if name == "one-VJP" else (
            f"{0.7 * k:.1f} {'met' if ratio >= 0.7 * k else 'missed'}")
        print(f"| {pname} | {k} | {name} | {C.us(C.median(t))} | "
              f"{ratio:.2f} | {goal} | {C.mib(mem[name]['temp'])} | "
              f"{C.mib(mem[name]['output'])} | {comp[name]:.2f} | "
              f"{diff[name]:.1e} |", flush=True)
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
