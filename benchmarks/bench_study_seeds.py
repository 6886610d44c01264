"""The converged studies' seeds: vmapped in one program, or one after another?

For each PINN of ``examples/studies/converged.py`` (Poisson ``C = 4`` and
Helmholtz, their published networks and schedule), ``n`` seeds of ``--steps``
steps of equal weights and of learning-rate annealing, each seed a jitted
``lax.scan`` run sequentially against one ``jax.vmap`` over the seeds; the
median of 3 repeats of each, after compilation. The runs give the same final
errors both ways (printed). Issue "evidence that holds" asks the studies to
vectorise seeds where that is faster on this CPU.

Run (from the repository root)::

  PYTHONPATH=. taskset -c 1 python benchmarks/bench_study_seeds.py --single-thread
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def make(problem: Any, rule: Any, steps: int) -> Any:
  import jax
  import optax

  import softadapt_jax as sa
  from examples.studies import _pinn_problems as pinn

  tx = optax.chain(sa.track_weights(rule), optax.adam(pinn.schedule()))
  grad_fn = sa.weighted_value_and_grad(problem.losses, rule)

  def run(seed: Any) -> Any:
    key_init, key_data = jax.random.split(jax.random.key(seed))
    params = problem.init(key_init)

    def step(carry: Any, key: Any) -> Any:
      params, opt_state = carry
      out = grad_fn(opt_state, params, problem.sample(key))
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
      return (optax.apply_updates(params, updates), opt_state), None

    carry, _ = jax.lax.scan(
        step, (params, tx.init(params)), jax.random.split(key_data, steps)
    )
    return problem.error(carry[0])

  return run


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--single-thread", action="store_true")
  args = parser.parse_args(argv)
  if args.single_thread:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    )
  import jax
  import jax.numpy as jnp

  import softadapt_jax as sa
  from examples.studies import _pinn_problems as pinn

  print("| problem | rule | sequential (s) | vmapped (s) | speed-up "
        "| max error difference |")
  print("|---|---|---:|---:|---:|---:|")
  problems = (("poisson_c4", pinn.poisson(4)), ("helmholtz", pinn.helmholtz()))
  for label, problem in problems:
    names = list(problem.names)
    for rule_name, rule in (("equal", sa.equal_weights(names)),
                            ("lra_wang2021", sa.grad_balance(names))):
      run = make(problem, rule, args.steps)
      one, many = jax.jit(run), jax.jit(jax.vmap(run))
      seeds = jnp.arange(args.seeds)
      jax.block_until_ready(one(0))
      jax.block_until_ready(many(seeds))
      seq_t, vmap_t = [], []
      for _ in range(3):
        t = time.perf_counter()
        seq = [float(one(s)) for s in range(args.seeds)]
        seq_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        batched = np.asarray(jax.block_until_ready(many(seeds)))
        vmap_t.append(time.perf_counter() - t)
      s, v = float(np.median(seq_t)), float(np.median(vmap_t))
      diff = float(np.max(np.abs(np.asarray(seq) - batched)))
      print(f"| {label} | {rule_name} | {s:.2f} | {v:.2f} | {s / v:.2f}x "
            f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
  main()
  sys.exit(0)
