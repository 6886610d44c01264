"""What the gradient-information rules cost: step time over the plain weighted sum.

Side by side in one run, per problem and ``K``:

- ``plain sum``: equal weights through the one route (one VJP per step);
- learning-rate annealing (``grad_balance``) at its published cadence
  (``wang2021``: every 10 steps) and at every step, by each statistics route
  (``unrolled``: ``K`` gradients; ``map``: one gradient in memory at a time;
  ``jacrev``); on the split problem also with the losses returned as a dict
  (``named losses``), where the unrolled route differentiates each loss
  before any stacking and XLA drops the others' computations (through a
  stacked ``[K]`` vector every gradient runs back through all of them);
- ``gradnorm`` (statistics every step), ``famo`` and
  ``uncertainty_weighting`` (loss values only);
- jinns' ``lr_annealing`` (jinns 1.10.2), which takes the ``K`` gradients
  every step, in a step written as jinns' solver does it.

Problems: ``split`` is a 2D Poisson PINN whose components each have their own
points (``K - 1`` residual strips and the boundary), written as ``K``
separate sub-computations; ``shared`` is an MLP with ``K`` heads on one trunk,
where every component needs the whole backward pass. Each variant is one
compiled ``lax.scan`` of ``--steps`` steps; variants are interleaved, the
median over ``--reps`` repeats is reported, and each ratio is the median of
the per-repeat ratios to the plain sum. Memory: XLA's temporary buffers of one
compiled step per statistics route.

Goals (issue "gradient-information rules"): at the published cadence the
amortised overhead of LRA over the plain sum is at most 10 %; at every step,
``K`` unrolled gradients cost at most 2x one VJP on split losses at K = 16.

Run: ``python benchmarks/bench_gradient_rules.py --single-thread`` (add
``--tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import _bench_common as bc
import jax
import jax.numpy as jnp
import optax

import softadapt_jax as sa

try:
  import jinns.loss as jinns_loss
  from jinns.loss._loss_components import PDEStatioComponents
except ImportError:  # the benchmarks extra installs it
  jinns_loss = None


def split_problem(k: int, tiny: bool) -> tuple[Callable[..., Any], Any, Any]:
  """The PINN, one sub-computation per component."""
  p = bc.make_pinn_problem(
      k, n_interior=64 if tiny else 512, n_boundary=32 if tiny else 128,
      width=16 if tiny else 64,
  )
  fns = p.component_fns

  def losses(params, batch):
    return jnp.stack([fns[j](params, batch) for j in range(k)])

  return losses, p.params, p.fixed


def named_split_losses(k: int, tiny: bool) -> Callable[..., Any]:
  """The same losses as a dict: the route differentiates each on its own."""
  p = bc.make_pinn_problem(
      k, n_interior=64 if tiny else 512, n_boundary=32 if tiny else 128,
      width=16 if tiny else 64,
  )
  fns = p.component_fns

  def losses(params, batch):
    return {f"c{j:02d}": fns[j](params, batch) for j in range(k)}

  return losses


def shared_problem(k: int, tiny: bool) -> tuple[Callable[..., Any], Any, Any]:
  """K heads on one trunk: one forward, every component needs it all."""
  p = bc.make_mlp_problem(
      k, steps=1, batch=32 if tiny else 256, width=32 if tiny else 256
  )
  return p.loss_vec_fn, p.params, bc.batch_at(p, 0)


def rules(k: int) -> dict[str, Any]:
  every = dict(update_every=1, after_step=False)
  return {
      "plain sum": (sa.equal_weights(k), "unrolled"),
      "LRA wang2021, every 10 (published)": (sa.grad_balance(k), "unrolled"),
      "LRA every step, unrolled": (sa.grad_balance(k, **every), "unrolled"),
      "LRA every step, map": (sa.grad_balance(k, **every), "map"),
      "LRA every step, jacrev": (sa.grad_balance(k, **every), "jacrev"),
      "gradnorm (every step)": (sa.gradnorm(k), "unrolled"),
      "famo (one pass)": (sa.famo(k, form="one_pass"), "unrolled"),
      "uncertainty_weighting": (sa.uncertainty_weighting(k), "unrolled"),
  }


def named_rules(k: int) -> dict[str, Any]:
  """LRA on the split problem's named losses (``named_split_losses``)."""
  names = [f"c{j:02d}" for j in range(k)]
  every = dict(update_every=1, after_step=False)
  return {
      "LRA wang2021, every 10 (published), named losses": (
          sa.grad_balance(names), "unrolled"),
      "LRA every step, unrolled, named losses": (
          sa.grad_balance(names, **every), "unrolled"),
  }


def run_fn(losses, rule, route, steps):
  tx = optax.chain(sa.track_weights(rule), optax.adam(1e-3))
  grad_fn = sa.weighted_value_and_grad(losses, rule, gradients=route)

  def step(carry, _, batch):
    params, opt_state = carry
    out = grad_fn(opt_state, params, batch)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return (optax.apply_updates(params, updates), opt_state), None

  @jax.jit
  def run(params, batch):
    carry = (params, tx.init(params))
    return jax.lax.scan(functools.partial(step, batch=batch), carry, None,
                        length=steps)[0][0]

  @jax.jit
  def one_step(params, opt_state, batch):
    return step((params, opt_state), None, batch)[0]

  return run, one_step, tx


def jinns_run_fn(losses, k, steps):
  """jinns' solver step at K = 3: K gradients, ``lr_annealing``, the weighted sum.

  jinns names its terms (dynamic loss, boundary, observations, ...), so its
  ``lr_annealing`` is run at K = 3 only: component 0 as the dynamic loss, 1
  as the boundary term, 2 as the observations.
  """
  assert jinns_loss is not None
  assert k == 3

  def step(carry, _, batch):
    params, opt_state, w = carry
    grads = [jax.grad(lambda p, j=j: losses(p, batch)[j])(params) for j in range(k)]
    lw = jinns_loss.LossWeightsPDEStatio(
        dyn_loss=w[0], boundary_loss=w[1], observations=w[2]
    )
    terms = PDEStatioComponents(
        dyn_loss=grads[0], norm_loss=None, boundary_loss=grads[1],
        observations=grads[2],
    )
    weights = jinns_loss.lr_annealing(lw, terms)
    direction = jax.tree.map(
        lambda *g: sum(weights[j] * g[j] for j in range(k)), *grads
    )
    updates, opt_state = optax.adam(1e-3).update(direction, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, weights), None

  @jax.jit
  def run(params, batch):
    carry = (params, optax.adam(1e-3).init(params), jnp.ones(k))
    return jax.lax.scan(functools.partial(step, batch=batch), carry, None,
                        length=steps)[0][0]

  return run


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ks", type=int, nargs="+", default=[3, 16])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--problems", nargs="+", default=["split", "shared"])
  parser.add_argument("--variants", nargs="+", default=None,
                      help="only these rows (names as printed), plus plain sum")
  parser.add_argument("--single-thread", action="store_true")
  args = parser.parse_args(argv)
  if args.tiny:
    args.steps, args.reps = 4, 2
  bc.print_header(
      "Gradient-information rules: step time over the plain weighted sum",
      f"steps={args.steps} reps={args.reps} tiny={args.tiny}",
      ("jinns",),
  )
  makers = {"split": split_problem, "shared": shared_problem}
  for problem_name in args.problems:
    make = makers[problem_name]
    for k in args.ks:
      losses, params, batch = make(k, args.tiny)
      variants = {}
      programs = {}
      table = {name: (rule, route, losses) for name, (rule, route)
               in rules(k).items()}
      if problem_name == "split":
        named = named_split_losses(k, args.tiny)
        table.update({name: (rule, route, named) for name, (rule, route)
                      in named_rules(k).items()})
      for name, (rule, route, fun) in table.items():
        if args.variants and name != "plain sum" and not any(
            v in name for v in args.variants
        ):
          continue
        run, one_step, tx = run_fn(fun, rule, route, args.steps)
        variants[name] = run
        programs[name] = (one_step, tx)
      if (problem_name == "split" and k == 3 and jinns_loss is not None
          and (not args.variants or any("jinns" in v for v in args.variants))):
        variants["jinns lr_annealing (K grads every step)"] = jinns_run_fn(
            losses, k, args.steps
        )
      for run in variants.values():  # compile and warm
        jax.block_until_ready(run(params, batch))
      timers = {
          name: functools.partial(bc.time_call, run, (params, batch))
          for name, run in variants.items()
      }
      times = bc.interleaved(timers, args.reps)
      base = times["plain sum"]
      print(f"\n### {problem_name}, K = {k}\n")
      print("| variant | step (us) | ratio to plain sum | noise |")
      print("|---|---:|---:|---:|")
      for name, ts in times.items():
        per_step = bc.median(ts) / args.steps
        print(f"| {name} | {bc.us(per_step)} | {bc.paired(ts, base):.2f}x "
              f"| {bc.spread(ts):.1%} |")
      print("\n| route (one step, every-step LRA) | temp MiB |")
      print("|---|---:|")
      for name in ("plain sum", "LRA every step, unrolled", "LRA every step, map",
                   "LRA every step, jacrev",
                   "LRA every step, unrolled, named losses"):
        if name not in programs:
          continue
        one_step, tx = programs[name]
        compiled = one_step.lower(params, tx.init(params), batch).compile()
        print(f"| {name} | {bc.mib(bc.memory(compiled)['temp'])} |")
  bc.print_footer()


if __name__ == "__main__":
  main()
