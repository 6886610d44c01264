"""Benchmark: a beta sweep as one vmapped program versus N sequential runs.

A small PINN training run (the 2D Poisson problem of ``bench_step.py``, K =
2: one residual term, one boundary term, full batch) of Adam steps with
loss-weighted SoftAdapt, the whole run one ``lax.scan``. Two sizes:
``small`` (tanh 2 -> 32 -> 32 -> 1, 128 interior + 64 boundary points, 500
steps) and ``tiny`` (2 -> 8 -> 1, 16 + 8 points, 2000 steps), where the
per-step work is so small that fixed per-operation costs dominate. ``beta`` is a traced
argument (the rule ``sa.softadapt(2, beta=beta, ...)`` is built inside the
run), so one compiled program serves every value:

- ``sequential``: the jitted run called once per beta (compiled once);
- ``vmap``: ``jax.vmap`` of the whole run over the N betas, one call.

Throughput = N * steps / wall time, for N = 1, 4, 16; the two are timed
interleaved (``--reps`` rounds, the order flipped every other round;
medians). The final parameters of the two agree (printed: max abs
difference), and the spread of the final errors over beta shows that the
runs differ.

Run::

  cd /work/main && .venv/bin/python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
from typing import Any

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

LEARNING_RATE = 1e-3
VARIANT = "loss_weighted"


def make_run(problem: C.Problem, steps: int):
  """``run(beta) -> (final params, final losses)``: one training run."""

  def run(beta):
    # The rule built from the traced beta: one program serves every value.
    rule = sa.softadapt(problem.num_losses, beta=beta, variant=VARIANT)
    tx = optax.chain(sa.track_weights(rule), optax.adam(LEARNING_RATE))
    grad_fn = sa.weighted_value_and_grad(problem.loss_vec_fn, rule)

    def step(carry, _):
      params, opt_state = carry
      out = grad_fn(opt_state, params, problem.fixed)
      updates, opt_state = tx.update(out.grad, opt_state, params,
                                     weighting_state=out.state)
      return (optax.apply_updates(params, updates), opt_state), out.losses

    (params, _), losses = jax.lax.scan(
        step, (problem.params, tx.init(problem.params)), None, length=steps)
    return params, losses[-1]

  return run


# name -> (width, depth, interior points, boundary points, steps per run)
SIZES = {
    "small": (32, 2, 128, 64, 500),
    "tiny": (8, 1, 16, 8, 2000),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16])
  parser.add_argument("--sizes", nargs="+", default=list(SIZES),
                      choices=list(SIZES))
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per run (default per size)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--smoke", action="store_true",
                      help="a smoke run: a 4-wide PINN, 5 steps, 2 rounds")
  args = parser.parse_args(argv)
  sizes = {n: SIZES[n] for n in args.sizes}
  if args.smoke:
    sizes, args.reps = {"smoke": (4, 1, 8, 4, 5)}, 2
  if args.steps is not None:
    sizes = {n: (*v[:4], args.steps) for n, v in sizes.items()}
  C.print_header(
      "Beta sweep: vmap versus sequential runs",
      "2D Poisson PINN K=2 (tanh MLP, sizes below), "
      f"adam({LEARNING_RATE}), SoftAdapt {VARIANT}, betas log-spaced in "
      f"[0.01, 10] (N=1: 0.1), {args.reps} interleaved rounds")
  print("Throughput in training steps per second (N runs x steps / wall "
        "time, median over the rounds); speedup = sequential / vmap time "
        "(median of the per-round ratios); noise = half the interquartile "
        "range over the median. `max abs diff`: the largest difference "
        "between the final parameters of the two; `final error`: min-max over "
        "the betas of the relative L2 error (the runs do differ).\n")
  print("| size | N | sequential steps/s | vmap steps/s | vmap speedup | goal "
        "| noise (seq, vmap) | max abs diff | final error (min-max) |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  results = {}
  for size, (width, depth, n_int, n_bnd, steps) in sizes.items():
    problem = C.make_pinn_problem(2, n_interior=n_int, n_boundary=n_bnd,
                                  width=width, depth=depth)
    run = make_run(problem, steps)
    single = jax.jit(run)
    batched = jax.jit(jax.vmap(run))
    for n in args.ns:
      betas = jnp.asarray(np.geomspace(0.01, 10.0, n) if n > 1 else [0.1],
                          jnp.float32)
      seq_args = [jnp.asarray(b) for b in betas]
      jax.block_until_ready(single(seq_args[0]))  # compile
      out_v = jax.block_until_ready(batched(betas))  # compile

      def sequential(seq_args=seq_args):
        return [single(b) for b in seq_args]

      out_s = jax.block_until_ready(sequential())
      diffs = []
      for i, (params_s, _) in enumerate(out_s):
        params_v = jax.tree.map(lambda a, i=i: a[i], out_v[0])
        diffs += [float(jnp.max(jnp.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(params_s), jax.tree.leaves(params_v),
                      strict=True)]
      diff = max(diffs)
      errors = [
          float(C.pinn_rel_l2(jax.tree.map(lambda a, i=i: a[i], out_v[0])))
          for i in range(n)]
      times = C.interleaved({
          "seq": lambda sequential=sequential: C.time_call(sequential),
          "vmap": lambda betas=betas: C.time_call(batched, (betas,)),
      }, args.reps)
      total = n * steps
      speed = C.paired(times["seq"], times["vmap"])
      results[size, n] = {"seq": total / C.median(times["seq"]),
                          "vmap": total / C.median(times["vmap"]),
                          "speedup": speed, "diff": diff}
      goal = f"2x {'met' if speed >= 2 else 'missed'}" if n == 16 else ""
      label = f"{size} (2-{width}x{depth}-1, {n_int}+{n_bnd} pts, {steps} steps)"
      print(f"| {label} | {n} | {total / C.median(times['seq']):,.0f} | "
            f"{total / C.median(times['vmap']):,.0f} | {speed:.2f}x | {goal} | "
            f"{C.spread(times['seq']) * 100:.0f}%, "
            f"{C.spread(times['vmap']) * 100:.0f}% | {diff:.1e} | "
            f"{min(errors):.3f}-{max(errors):.3f} |", flush=True)
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
