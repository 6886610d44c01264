"""Benchmark: the cost of SoftAdapt in a compiled training step.

Three measurements, side by side in one run, printed as markdown tables:

1. Overhead. A jitted training step run inside ``jax.lax.scan`` (``--steps``
   steps per jitted call; time per step = wall / steps) with SoftAdapt through
   the library's one route (``sa.weighted_value_and_grad(fun, rule)`` +
   ``optax.chain(sa.track_weights(rule), optax.adam)``, the rule
   ``sa.softadapt(K, ...)``), against the same step on the plain sum
   (``jax.value_and_grad`` of ``sum(losses)`` + ``optax.adam``, no library). The
   variants are timed interleaved (ABAB..., the order flipped every other
   repeat) so that drift and noise on a small machine hit both alike; the
   table reports the median and the min per step and their ratios, plus the
   median of the per-repeat paired ratios, and (noise-free) the ratio of
   XLA's flop counts and the number of extra fused kernels. Three models:

   - ``mlp``: a 3-hidden-layer MLP (32 -> 256 -> 256 -> 256 -> K, GELU), batch
     256, one regression head per loss component, a fresh batch every step;
   - ``mlp64``: the same with width 64 (a ~10x cheaper step, so any fixed
     per-step cost shows ~10x more);
   - ``pinn``: a 2D Poisson PINN (2 -> 64 -> 64 -> 64 -> 1, tanh), Laplacian by
     forward-over-forward ``jvp`` (second derivatives), 512 interior points
     split into ``K - 1`` residual terms (strips of the square) plus one
     boundary term on 128 points.

2. Every weighting rule, K = 4, through the same route and the same scanned
   step, next to the plain sum: ``equal_weights`` (weights 1 each: the plain
   sum's direction, so its row is the cost of the route itself),
   ``fixed_weights``, ``softadapt``, ``softadapt(log_losses=True)``,
   ``per_epoch(softadapt, 10)``, ``ratio_softadapt``, ``dwa``, ``relobralo``
   and ``random_weighting`` (:data:`RULES`).

3. Versus the reference on the host. A Python loop that, every step, runs a
   jitted forward for the loss vector, asks the reference package's
   ``softadapt.LossWeightedSoftAdapt(beta=0.1, accuracy_order=1)`` for the
   weights from the kept history (the last ``order + 1`` loss vectors, passed
   as ``K`` 1-d arrays), then runs a jitted weighted gradient step with them:
   what a Keras/JAX user does today. Compared with our scanned loop on the
   same model (time per step). A second host loop ("lean") fuses the loss
   values into the gradient step (one forward per step) and so uses the
   weights from the losses of the previous step; a third ("plain") drops the
   oracle (fixed weights): the floor of any host loop. Together they show
   where the host loop's time goes.

Run::

  cd /work/main && .venv/bin/python benchmarks/bench_step.py

``--quick`` is a short run (mostly compilation); ``--tiny`` shrinks the
models too (the smoke test); ``--single-thread`` runs XLA on one thread pinned
to one core, which makes the timings far steadier on a small machine shared
with other work. Compile time is excluded (each program is compiled and
warmed up first) and every timing blocks on its results.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

Problem = C.Problem
batch_at = C.batch_at
time_call = C.time_call
us = C.us

BETA = 0.1
ORDER = 1
VARIANT = "loss_weighted"
EPSILON = 1e-8  # ours (the default); the oracle is given the same value.
LEARNING_RATE = 1e-3


# name -> (make(num_losses, steps, tiny), default scan steps per timed call)
def _mlp(width: int, name: str):
  def make(k: int, n: int, tiny: bool) -> Problem:
    if tiny:
      return C.make_mlp_problem(k, n, batch=8, d_in=4, width=8, name=name)
    return C.make_mlp_problem(k, n, width=width, name=name)
  return make


def _pinn(k: int, n: int, tiny: bool) -> Problem:
  del n  # fixed collocation points
  if tiny:
    return C.make_pinn_problem(k, n_interior=8 * (k - 1), n_boundary=8, width=8,
                               depth=1)
  return C.make_pinn_problem(k)


MODELS: dict[str, tuple[Callable[[int, int, bool], Problem], int]] = {
    "mlp": (_mlp(256, "mlp"), 100),
    "mlp64": (_mlp(64, "mlp64"), 500),
    "pinn": (_pinn, 40),
}


# --------------------------------------------------------------------------
# Training loops. A loop is ``make(problem) -> (init, step)``: ``init(params)``
# is the scan carry, ``step(carry, batch) -> (carry, weights or None)``.


def softadapt_rule(k: int) -> sa.LossWeighting:
  """The SoftAdapt rule of tables 1 and 3 (the oracle's settings)."""
  return sa.softadapt(k, beta=BETA, variant=VARIANT, order=ORDER,
                      epsilon=EPSILON)


# label -> the rule for K losses. Tables 2 times each through the route.
RULES: dict[str, Callable[[int], sa.LossWeighting]] = {
    "equal_weights": lambda k: sa.equal_weights(k),
    "fixed_weights": lambda k: sa.fixed_weights(jnp.full((k,), 1.0 / k)),
    "softadapt": softadapt_rule,
    "softadapt(log_losses=True)": lambda k: sa.softadapt(
        k, beta=BETA, order=ORDER, log_losses=True),
    "per_epoch(softadapt, 10)": lambda k: sa.per_epoch(softadapt_rule(k), 10),
    "ratio_softadapt": lambda k: sa.ratio_softadapt(k),
    "dwa": lambda k: sa.dwa(k),
    "relobralo": lambda k: sa.relobralo(k),
    "random_weighting": lambda k: sa.random_weighting(k),
}
# Always timed in table 2: the plain sum (no library, the baseline) and the
# same direction through the route (equal weights 1 each).
BASELINE = "plain sum"
ALWAYS = (BASELINE, "equal_weights")


def make_rule_loop(make_rule: Callable[[int], sa.LossWeighting]):
  """A rule through the one route: ``sa.weighted_value_and_grad(fun, rule)``
  and ``optax.chain(sa.track_weights(rule), optax.adam)``."""

  def make(problem: Problem):
    rule = make_rule(problem.num_losses)
    tx = optax.chain(sa.track_weights(rule), optax.adam(LEARNING_RATE))
    grad_fn = sa.weighted_value_and_grad(problem.loss_vec_fn, rule)

    def step(carry, batch):
      params, opt_state = carry
      out = grad_fn(opt_state, params, batch)
      updates, opt_state = tx.update(out.grad, opt_state, params,
                                     weighting_state=out.state)
      return (optax.apply_updates(params, updates), opt_state), out.weights

    return (lambda params: (params, tx.init(params))), step

  return make


make_softadapt_loop = make_rule_loop(softadapt_rule)


def make_plain_loop(problem: Problem):
  """The baseline: ``jax.value_and_grad`` of the plain sum + adam, no library."""
  tx = optax.adam(LEARNING_RATE)
  vg = jax.value_and_grad(lambda p, b: jnp.sum(problem.loss_vec_fn(p, b)))

  def step(carry, batch):
    params, opt_state = carry
    _, grad = vg(params, batch)
    updates, opt_state = tx.update(grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  return (lambda params: (params, tx.init(params))), step


def rule_loops(only: list[str] | None = None) -> dict[str, Any]:
  """``{label: make_loop}``: the plain sum, equal weights, then the rules."""
  loops: dict[str, Any] = {BASELINE: make_plain_loop}
  for label, make_rule in RULES.items():
    if label in ALWAYS or only is None or label in only:
      loops[label] = make_rule_loop(make_rule)
  return loops


def compile_scan(problem: Problem, make_loop, steps: int,
                 keep_ys: bool = False):
  """The compiled ``run(carry, data) -> (carry, ys)``, and its arguments.

  Compiled ahead of time, so that its cost analysis and its optimized HLO
  are at hand.
  """
  init, step = make_loop(problem)

  if problem.batches is not None:
    data = jax.tree.map(lambda a: a[:steps], problem.batches)

    def run_batches(carry, xs):
      carry, ys = jax.lax.scan(step, carry, xs)
      return carry, ys if keep_ys else None
    run = run_batches
  else:
    data = problem.fixed

    def run_fixed(carry, fixed):
      body = lambda carry, _: step(carry, fixed)
      carry, ys = jax.lax.scan(body, carry, None, length=steps)
      return carry, ys if keep_ys else None
    run = run_fixed

  args = (init(problem.params), data)
  return jax.jit(run).lower(*args).compile(), args


def _static_cost(compiled) -> tuple[float, int]:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))), compiled.as_text().count(
      " fusion(")


class Timing(NamedTuple):
  med: float  # seconds per step
  min: float
  paired: float  # median over repeats of this / baseline
  spread: float  # half the IQR over the median
  flops_ratio: float  # XLA cost analysis of one step, this / baseline
  extra_fusions: int  # fused kernels in the optimized HLO, this - baseline


def measure(problem: Problem, loops: dict[str, Any], steps: int, reps: int,
            baseline: str) -> tuple[dict[str, Timing], dict[str, Any]]:
  """Interleaved timing of scanned loops; also returns them, compiled."""
  compiled = {n: compile_scan(problem, m, steps) for n, m in loops.items()}
  static = {n: _static_cost(c) for n, (c, _) in compiled.items()}
  for _ in range(2):  # warm up (compiled already)
    for c, a in compiled.values():
      time_call(c, a)
  times = C.interleaved(
      {n: (lambda c=c, a=a: time_call(c, a) / steps)
       for n, (c, a) in compiled.items()}, reps)
  base, (bflops, bfusions) = times[baseline], static[baseline]
  out = {
      n: Timing(statistics.median(t), min(t), C.paired(t, base), C.spread(t),
                static[n][0] / bflops, static[n][1] - bfusions)
      for n, t in times.items()
  }
  return out, compiled


# --------------------------------------------------------------------------
# The host loop with the reference package as the weights oracle.


def make_oracle():
  import softadapt  # the reference; needs KERAS_BACKEND set first

  oracle = softadapt.LossWeightedSoftAdapt(beta=BETA, accuracy_order=ORDER)
  oracle.epsilon = EPSILON  # match ours (the Keras port's default is 1e-7)
  return oracle


class HostLoop:
  """The loop a Keras/JAX user writes today, resumable in timed chunks.

  Modes:
    ``host``: every step a jitted forward for the loss vector, the oracle's
      weights from the kept history on the host, then a jitted weighted
      gradient step (the same semantics as ours: the weights of step ``t``
      include the losses of step ``t``).
    ``lean``: one jitted step that also returns the losses; the oracle's
      weights are used at the next step (one step late).
    ``plain``: the same jitted step with fixed weights and no oracle: the
      floor of any host loop.
  """

  def __init__(self, problem: Problem, oracle, mode: str):
    self.problem, self.oracle, self.mode = problem, oracle, mode
    k = problem.num_losses
    tx = optax.adam(LEARNING_RATE)
    self.losses_fn = jax.jit(problem.loss_vec_fn)

    @jax.jit
    def weighted_step(params, opt_state, weights, batch):
      def total(p):
        losses = problem.loss_vec_fn(p, batch)
        return jnp.dot(weights, losses), losses
      (_, losses), grad = jax.value_and_grad(total, has_aux=True)(params)
      updates, opt_state = tx.update(grad, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, losses

    self.step_fn = weighted_step
    self.params, self.opt_state = problem.params, tx.init(problem.params)
    self.initial = np.full((k,), 1.0 / k, np.float32)
    self.weights = self.initial
    self.history: list[np.ndarray] = []
    self.used: list[np.ndarray] = []
    self.num_batches = (
        1 if problem.batches is None
        else jax.tree.leaves(problem.batches)[0].shape[0])
    self.batches = [batch_at(problem, i) for i in range(self.num_batches)]
    self.i = 0

  def _oracle_weights(self) -> np.ndarray:
    if len(self.history) < ORDER + 1:
      return self.initial
    cols = [np.asarray([row[j] for row in self.history])
            for j in range(self.problem.num_losses)]
    return np.asarray(self.oracle.get_component_weights(*cols, verbose=False))

  def _record(self, losses: jax.Array) -> None:
    self.history.append(np.asarray(losses))
    del self.history[: -(ORDER + 1)]
    self.weights = self._oracle_weights()

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns the wall time per step."""
    jax.block_until_ready(self.params)
    t0 = time.perf_counter()
    for _ in range(steps):
      batch = self.batches[self.i % self.num_batches]
      self.i += 1
      if self.mode == "host":
        self._record(self.losses_fn(self.params, batch))
      self.used.append(self.weights)
      self.params, self.opt_state, losses = self.step_fn(
          self.params, self.opt_state, self.weights, batch)
      if self.mode == "lean":
        self._record(losses)
    jax.block_until_ready(self.params)
    return (time.perf_counter() - t0) / steps


class HostComparison(NamedTuple):
  ours: float  # seconds per step, median
  host: float
  lean: float
  plain: float
  paired_host: float  # median over repeats of host / ours
  paired_lean: float
  weights_diff: float


def compare_with_host(problem: Problem, oracle, sa_run, sa_args, sa_steps: int,
                      chunk: int, reps: int, check_steps: int) -> HostComparison:
  # Same start, same steps: the weights the host loop uses equal ours.
  check = HostLoop(problem, oracle, "host")
  check.run(check_steps)
  run_w, args_w = compile_scan(problem, make_softadapt_loop, check_steps,
                               keep_ys=True)
  ours_w = np.asarray(run_w(*args_w)[1])
  diff = float(np.max(np.abs(ours_w - np.stack(check.used))))

  loops = {m: HostLoop(problem, oracle, m) for m in ("host", "lean", "plain")}
  for loop in loops.values():
    loop.run(3)  # compile and warm up
  time_call(sa_run, sa_args)
  timers = {"ours": lambda: time_call(sa_run, sa_args) / sa_steps}
  timers.update({m: (lambda loop=loop: loop.run(chunk))
                 for m, loop in loops.items()})
  times = C.interleaved(timers, reps)
  med = {m: statistics.median(t) for m, t in times.items()}
  return HostComparison(med["ours"], med["host"], med["lean"], med["plain"],
                        C.paired(times["host"], times["ours"]),
                        C.paired(times["lean"], times["ours"]), diff)


def time_oracle_call(oracle, k: int, calls: int) -> float:
  rng = np.random.default_rng(0)
  cols = [rng.uniform(0.5, 1.5, ORDER + 1).astype(np.float32) for _ in range(k)]
  np.asarray(oracle.get_component_weights(*cols, verbose=False))
  t = []
  for _ in range(calls):
    t0 = time.perf_counter()
    np.asarray(oracle.get_component_weights(*cols, verbose=False))
    t.append(time.perf_counter() - t0)
  return statistics.median(t)


def time_weights_alone(k: int, steps: int, reps: int) -> float:
  """Per step cost of the SoftAdapt rule's ``update`` alone inside a scan."""
  rule = softadapt_rule(k)

  @jax.jit
  def run(state, losses):
    def body(state, loss_vec):
      w, state = rule.update(state, loss_vec)
      return state, w
    return jax.lax.scan(body, state, losses)

  state = rule.init()
  losses = jax.random.uniform(jax.random.PRNGKey(0), (steps, k)) + 0.5
  time_call(run, (state, losses))
  return statistics.median(time_call(run, (state, losses)) / steps
                           for _ in range(reps))


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="a short run: 3 steps, 2 repeats, K=4")
  parser.add_argument("--tiny", action="store_true",
                      help="--quick on tiny models (a smoke test)")
  parser.add_argument("--single-thread", action="store_true",
                      help="one XLA thread, pinned to one core: steadier "
                      "timings on a small, busy machine")
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16])
  parser.add_argument("--models", nargs="+", default=list(MODELS),
                      choices=list(MODELS))
  parser.add_argument("--sections", nargs="+", default=["overhead", "rules",
                                                        "host"],
                      choices=["overhead", "rules", "host"])
  parser.add_argument("--rules-k", type=int, default=4)
  parser.add_argument("--rules", nargs="+", default=None, choices=list(RULES),
                      help="time only these rules (default: all; the plain "
                      "sum and equal_weights always run)")
  parser.add_argument("--steps", type=int, default=None,
                      help="scan steps per timed call (default per model)")
  parser.add_argument("--reps", type=int, default=None,
                      help="timed calls per variant (interleaved)")
  parser.add_argument("--host-chunk", type=int, default=None,
                      help="host-loop steps per timed chunk")
  parser.add_argument("--host-reps", type=int, default=None,
                      help="timed chunks per host loop (interleaved)")
  args = parser.parse_args(argv)

  if args.quick or args.tiny:
    steps: dict[str, int] = dict.fromkeys(MODELS, 3)
    reps, host_chunk, host_reps, check_steps = 2, 3, 2, 3
    given = sys.argv[1:] if argv is None else argv
    ks = args.ks if "--ks" in given else [4]
  else:
    steps = {m: spec[1] for m, spec in MODELS.items()}
    reps, host_chunk, host_reps, check_steps, ks = 20, 50, 6, 50, args.ks
  if args.steps is not None:
    given_steps: int = args.steps
    steps = dict.fromkeys(steps, given_steps)
  reps = args.reps or reps
  host_chunk = args.host_chunk or host_chunk
  host_reps = args.host_reps or host_reps
  results: dict[str, Any] = {"overhead": {}, "rules": {}, "host": {}}

  def make(model: str, k: int, n: int) -> Problem:
    return MODELS[model][0](k, n, args.tiny)

  C.print_header(
      "SoftAdapt step benchmark",
      f"variant={VARIANT}, beta={BETA}, order={ORDER}, adam({LEARNING_RATE}), "
      f"scan steps per call {steps}, {reps} interleaved repeats per variant"
      + (", tiny models" if args.tiny else ""),
      packages=("softadapt", "keras"))

  compiled: dict[tuple[str, int], Any] = {}
  if "overhead" in args.sections:
    print("## 1. Overhead of SoftAdapt (one-VJP route) over the plain sum\n")
    print("Time per step inside `lax.scan`, microseconds. Ratios: SoftAdapt / "
          "plain sum; `paired` is the median of the per-repeat ratios and "
          "gives the `overhead` column; `noise` is half the interquartile "
          "range of the SoftAdapt times over their median. `flops` and "
          "`+fusions`: XLA's cost analysis of the compiled step (SoftAdapt / "
          "plain sum) and the number of extra fused kernels in its optimized "
          "HLO: noise-free.\n")
    print("| model | K | SoftAdapt median | SoftAdapt min | plain sum median | "
          "plain sum min | ratio (median) | ratio (min) | ratio (paired) | "
          "overhead | noise | flops | +fusions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
      for k in ks:
        t, comp = measure(
            make(model, k, steps[model]),
            {"softadapt": make_softadapt_loop, BASELINE: make_plain_loop},
            steps[model], reps, baseline=BASELINE)
        compiled[model, k] = comp["softadapt"]
        s, f = t["softadapt"], t[BASELINE]
        results["overhead"][model, k] = s.paired
        print(f"| {model} | {k} | {us(s.med)} | {us(s.min)} | {us(f.med)} | "
              f"{us(f.min)} | {s.med / f.med:.3f} | {s.min / f.min:.3f} | "
              f"{s.paired:.3f} | {(s.paired - 1) * 100:+.1f}% | "
              f"{s.spread * 100:.1f}% | {s.flops_ratio:.5f} | "
              f"{s.extra_fusions} |", flush=True)
    print()
    print("SoftAdapt weights alone (`rule.update` in a scan), per step: "
          + ", ".join(f"K={k}: {us(time_weights_alone(k, 2000, reps))} us"
                      for k in ks))
    print()

  if "rules" in args.sections:
    k = args.rules_k
    loops = rule_loops(args.rules)
    print(f"## 2. Every weighting rule over the plain sum, K={k}\n")
    print("Same scanned step as table 1, the weighting swapped: every rule "
          "through the one route, `sa.weighted_value_and_grad(fun, rule)` + "
          "`optax.chain(sa.track_weights(rule), adam)`; `plain sum` is "
          "`jax.value_and_grad` of the sum, no library, and `equal_weights` "
          "computes the same direction through the route. All variants of a "
          "model are timed interleaved in one measurement; `ratio` is the "
          "median of the per-repeat ratios to the plain sum.\n")
    print("| model | rule | us/step (median) | ratio to plain sum | "
          "overhead | noise | flops | +fusions |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
      t, _ = measure(make(model, k, steps[model]), loops, steps[model],
                     reps, baseline=BASELINE)
      for name, tm in t.items():
        results["rules"][model, name] = tm.paired
        print(f"| {model} | {name} | {us(tm.med)} | "
              f"{tm.paired:.3f} | {(tm.paired - 1) * 100:+.1f}% | "
              f"{tm.spread * 100:.1f}% | {tm.flops_ratio:.5f} | "
              f"{tm.extra_fusions} |", flush=True)
    print()

  if "host" in args.sections:
    oracle = make_oracle()
    k_host = 4 if 4 in ks else ks[0]
    print("## 3. Our scanned loop versus a host loop with the reference "
          "oracle\n")
    print(f"K={k_host}, microseconds per step (median of {host_reps} "
          f"interleaved chunks of {host_chunk} host steps, about "
          f"{host_reps * host_chunk} steps per host loop) and speedup = host "
          "/ ours (paired: median of per-chunk ratios). `host`: jitted "
          "forward + oracle weights on the host + jitted weighted step (same "
          "weights as ours); `lean`: one jitted step returning the losses, "
          "oracle weights used one step late; `plain`: the jitted step with "
          "fixed weights, no oracle (the floor of a host loop). `w diff`: max "
          "abs difference between the weights of `host` and ours over the "
          f"first {check_steps} steps from the same start.\n")
    print("| model | ours (scan) | host | lean | plain | speedup vs host "
          "| paired | speedup vs lean | paired | w diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
      problem = make(model, k_host, max(steps[model], check_steps))
      if (model, k_host) in compiled:
        run_sa, args_sa = compiled[model, k_host]
      else:
        run_sa, args_sa = compile_scan(problem, make_softadapt_loop,
                                       steps[model])
      c = compare_with_host(problem, oracle, run_sa, args_sa, steps[model],
                            host_chunk, host_reps, check_steps)
      results["host"][model] = c
      print(f"| {model} | {us(c.ours)} | {us(c.host)} | {us(c.lean)} | "
            f"{us(c.plain)} | {c.host / c.ours:.2f}x | {c.paired_host:.2f}x | "
            f"{c.lean / c.ours:.2f}x | {c.paired_lean:.2f}x | "
            f"{c.weights_diff:.1e} |", flush=True)
    print()
    print("Reference oracle call alone (`get_component_weights`, median): "
          + ", ".join(f"K={k}: {us(time_oracle_call(oracle, k, 50))} us"
                      for k in ks))
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
