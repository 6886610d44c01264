"""Benchmark: the cost of the weight computation itself, against K and order.

The SoftAdapt rule's ``update`` (``sa.softadapt(K, order=p, beta=0.1,
variant="loss_weighted")``, the same code as ``sa.softadapt_weights``) called
once per step inside a jitted ``lax.scan`` over a ``[steps, K]`` array of
loss vectors (each step records a new vector, so nothing can be hoisted out of
the loop): time per call for K = 2 .. 4096 at order 1, and for order 1 .. 10
at K = 4 and K = 1024. Memory: the state's size (``count``, a
``[order + 1, K]`` history, ``[K]`` weights, ``num_skipped``) and XLA's
scratch (``temp``) buffer of one jitted call (``compiled.memory_analysis()``).

For scale, the same table prints the cost of one gradient of a small model
in the same kind of scanned loop (a fresh batch every step): the MLP
32 -> 64 -> 64 -> 64 -> 4 (GELU, batch 256, ``jax.value_and_grad`` of the
sum of its 4 losses), and the time of one scanned step of the
``--no-weights`` baseline (the scan over the losses alone), which is
subtracted.

Run::

  cd /work/main && .venv/bin/python benchmarks/bench_scaling.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
import statistics
from typing import Any

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp

import softadapt_jax as sa

BETA = 0.1
VARIANT = "loss_weighted"


def make_rule(k: int, order: int) -> sa.LossWeighting:
  return sa.softadapt(k, order=order, beta=BETA, variant=VARIANT)


def weights_program(k: int, order: int, steps: int):
  """A compiled scan of ``steps`` calls; returns ``(compiled, args)``."""
  rule = make_rule(k, order)

  def run(state, losses):
    def body(state, loss_vec):
      w, state = rule.update(state, loss_vec)
      return state, w[0]
    return jax.lax.scan(body, state, losses)

  state = rule.init()
  losses = jax.random.uniform(jax.random.PRNGKey(k + order), (steps, k)) + 0.5
  args = (state, losses)
  return jax.jit(run).lower(*args).compile(), args


def baseline_program(k: int, steps: int):
  """The same scan without the weights: it only reads each loss vector."""

  def run(acc, losses):
    def body(acc, loss_vec):
      return acc + loss_vec[0], loss_vec[0]
    return jax.lax.scan(body, acc, losses)

  losses = jax.random.uniform(jax.random.PRNGKey(k), (steps, k)) + 0.5
  args = (jnp.zeros(()), losses)
  return jax.jit(run).lower(*args).compile(), args


def single_call_memory(k: int, order: int) -> dict[str, int]:
  rule = make_rule(k, order)
  state = rule.init()
  losses = jnp.ones((k,))
  fn = jax.jit(rule.update)
  return C.memory(fn.lower(state, losses).compile())


def state_bytes(k: int, order: int) -> int:
  return sum(x.size * x.dtype.itemsize
             for x in jax.tree.leaves(make_rule(k, order).init()))


def gradient_program(steps: int, tiny: bool):
  """One ``value_and_grad`` of the small MLP per scanned step."""
  problem = (C.make_mlp_problem(4, steps, batch=8, d_in=4, width=8) if tiny
             else C.make_mlp_problem(4, steps, width=64))
  vg = jax.value_and_grad(lambda p, b: jnp.sum(problem.loss_vec_fn(p, b)))

  def run(params, xs):
    def body(params, batch):
      value, grad = vg(params, batch)
      params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grad)
      return params, value
    return jax.lax.scan(body, params, xs)

  args = (problem.params, problem.batches)
  return jax.jit(run).lower(*args).compile(), args


def per_step(compiled, args, steps: int, reps: int) -> list[float]:
  C.time_call(compiled, args)
  return [C.time_call(compiled, args) / steps for _ in range(reps)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--ks", type=int, nargs="+",
                      default=[2, 4, 16, 64, 256, 1024, 4096])
  parser.add_argument("--orders", type=int, nargs="+",
                      default=[1, 2, 3, 5, 10])
  parser.add_argument("--order-ks", type=int, nargs="+", default=[4, 1024])
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args(argv)
  if args.tiny:
    args.ks, args.orders, args.order_ks, args.reps = [8], [2], [4], 2
  budget = 2e4 if args.tiny else 4e6  # ~ K * steps per timed call

  def steps_for(k: int) -> int:
    return int(min(2000, max(50, budget // k)))

  C.print_header(
      "Scaling of the SoftAdapt rule's update (softadapt_weights)",
      f"variant={VARIANT}, beta={BETA}, float32, {args.reps} repeats "
      "(interleaved with the baseline scan), steps per call "
      f"min(2000, max(50, {budget:.0e} / K))")

  g_steps = 20 if args.tiny else 200
  grad_c, grad_a = gradient_program(g_steps, args.tiny)
  t_grad = statistics.median(per_step(grad_c, grad_a, g_steps, args.reps))

  def measure(k: int, order: int) -> tuple[float, float]:
    steps = steps_for(k)
    wc, wa = weights_program(k, order, steps)
    bc, ba = baseline_program(k, steps)
    C.time_call(wc, wa)
    C.time_call(bc, ba)
    t = C.interleaved({"w": lambda: C.time_call(wc, wa) / steps,
                       "b": lambda: C.time_call(bc, ba) / steps}, args.reps)
    return C.median(t["w"]), C.median(t["w"]) - C.median(t["b"])

  print("Time per call in microseconds: `scan step` is one step of the scan "
        "with the call, `net` subtracts the scan's own per-step cost (the "
        "baseline scan without it; can read 0 or below for the cheapest "
        "calls). `x gradient` = net / the time of one gradient step of the "
        f"small MLP ({C.us(t_grad)} us per step: 32-64-64-64-4, batch 256, "
        "`value_and_grad` + SGD, scanned). Memory: the state in bytes and "
        "XLA's scratch buffer of one jitted call.\n")
  print("| K | order | scan step us | net us | x gradient | state bytes | "
        "temp bytes |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  results: dict[Any, Any] = {"grad": t_grad}
  rows = [(k, 1) for k in args.ks]
  rows += [(k, o) for k in args.order_ks for o in args.orders if o != 1]
  for k, order in rows:
    step, net = measure(k, order)
    mem = single_call_memory(k, order)
    results[k, order] = {"step": step, "net": net, "ratio": net / t_grad,
                         "state": state_bytes(k, order), "temp": mem["temp"]}
    print(f"| {k} | {order} | {step * 1e6:,.2f} | {net * 1e6:,.2f} | "
          f"{net / t_grad:.4f} | {state_bytes(k, order):,} | "
          f"{mem['temp']:,} |", flush=True)
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
