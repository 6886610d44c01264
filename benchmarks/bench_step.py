"""Benchmark: the cost of SoftAdapt in a compiled training step.

Two measurements, side by side in one run, printed as markdown tables:

1. Overhead. A jitted training step run inside ``jax.lax.scan`` (``--steps``
   steps per jitted call; time per step = wall / steps) with SoftAdapt through
   the one-VJP route (``softadapt_value_and_grad`` + ``softadapt_track`` +
   ``optax.adam``), against the same step with a fixed-weight sum
   (``jax.value_and_grad`` of ``dot(w_fixed, losses)`` + ``optax.adam``). The
   two variants are timed interleaved (ABAB..., the order flipped every other
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

2. Versus the reference on the host. A Python loop that, every step, runs a
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

  cd /work/main && KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_step.py

``--quick`` is a smoke run (under a minute, mostly compilation);
``--single-thread`` runs XLA on one thread pinned to one core, which makes the
timings far steadier on a small machine shared with other work. Compile time
is excluded (each program is compiled and warmed up first) and every timing
blocks on its results.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
if "--single-thread" in sys.argv:  # must precede the jax import
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false")
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
# Benchmark the working tree's package, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import datetime
import importlib.metadata
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

BETA = 0.1
ORDER = 1
VARIANT = "loss_weighted"
EPSILON = 1e-8  # ours (the default); the oracle is given the same value.
LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------
# Models: a loss-vector function, initial parameters and per-step batches.


class Problem(NamedTuple):
  name: str
  num_losses: int
  loss_vec_fn: Callable[..., jax.Array]  # (params, batch) -> [K]
  params: Any
  batches: Any  # pytree with a leading [steps] axis, or None
  fixed: Any  # batch pieces that never change (collocation points)


def _init_mlp(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True):
    params.append({
        "w": jax.random.normal(k, (m, n), jnp.float32) * np.sqrt(2.0 / m),
        "b": jnp.zeros((n,), jnp.float32),
    })
  return params


def _apply_mlp(params: list[dict[str, jax.Array]], x: jax.Array,
               act: Callable[[jax.Array], jax.Array]) -> jax.Array:
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def make_mlp_problem(num_losses: int, steps: int, seed: int = 0,
                     batch: int = 256, d_in: int = 32,
                     width: int = 256, name: str = "mlp") -> Problem:
  """K regression heads on a shared trunk; a fresh batch every step."""
  kp, kx, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = _init_mlp(kp, [d_in, width, width, width, num_losses])
  # Targets of different difficulty: t_k = sin(freq_k * <a_k, x>).
  a = jax.random.normal(ka, (d_in, num_losses), jnp.float32) / np.sqrt(d_in)
  freqs = jnp.linspace(0.5, 3.0, num_losses, dtype=jnp.float32)
  x = jax.random.normal(kx, (steps, batch, d_in), jnp.float32)
  t = jnp.sin(freqs * (x @ a))

  def loss_vec_fn(params, batch):
    xb, tb = batch
    y = _apply_mlp(params, xb, jax.nn.gelu)
    return jnp.mean((y - tb) ** 2, axis=0)  # [K]

  return Problem(name, num_losses, loss_vec_fn, params, (x, t), None)


def make_pinn_problem(num_losses: int, seed: int = 0, n_interior: int = 512,
                      n_boundary: int = 128, width: int = 64) -> Problem:
  """2D Poisson -Lap u = f on the unit square, u = 0 on the boundary.

  ``K - 1`` residual terms (the interior points sorted by ``x`` and split into
  strips) plus one boundary term: every loss needs second derivatives.
  """
  if num_losses < 2:
    raise ValueError("the PINN problem needs num_losses >= 2")
  kp, ki, kb, ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = _init_mlp(kp, [2, width, width, width, 1])
  n_res = num_losses - 1
  per = n_interior // n_res
  interior = jax.random.uniform(ki, (per * n_res, 2), jnp.float32)
  interior = interior[jnp.argsort(interior[:, 0])].reshape(n_res, per, 2)
  t = jax.random.uniform(kb, (n_boundary,), jnp.float32)
  side = jax.random.randint(ks, (n_boundary,), 0, 4)
  zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
  bx = jnp.select([side == 0, side == 1, side == 2], [zeros, ones, t], t)
  by = jnp.select([side == 0, side == 1, side == 2], [t, t, zeros], ones)
  boundary = jnp.stack([bx, by], axis=-1)

  def u(params, xy):  # [2] -> scalar
    return _apply_mlp(params, xy, jnp.tanh)[0]

  def laplacian(params, xy):
    def d2(e):
      du = lambda z: jax.jvp(lambda w: u(params, w), (z,), (e,))[1]
      return jax.jvp(du, (xy,), (e,))[1]
    return d2(jnp.array([1.0, 0.0])) + d2(jnp.array([0.0, 1.0]))

  def source(xy):  # -Lap of sin(pi x) sin(pi y)
    return 2 * np.pi**2 * jnp.sin(np.pi * xy[..., 0]) * jnp.sin(np.pi * xy[..., 1])

  def loss_vec_fn(params, batch):
    interior, boundary = batch
    lap = jax.vmap(jax.vmap(lambda z: laplacian(params, z)))(interior)
    residual = jnp.mean((lap + source(interior)) ** 2, axis=1)  # [K - 1]
    ub = jax.vmap(lambda z: u(params, z))(boundary)
    return jnp.concatenate([residual, jnp.mean(ub**2)[None]])

  return Problem("pinn", num_losses, loss_vec_fn, params, None,
                 (interior, boundary))


def batch_at(problem: Problem, i: int) -> Any:
  if problem.batches is None:
    return problem.fixed
  return jax.tree.map(lambda a: a[i], problem.batches)


# name -> (make(num_losses, steps), default scan steps per timed call)
MODELS: dict[str, tuple[Callable[[int, int], Problem], int]] = {
    "mlp": (lambda k, n: make_mlp_problem(k, n, name="mlp"), 100),
    "mlp64": (lambda k, n: make_mlp_problem(k, n, width=64, name="mlp64"),
              500),
    "pinn": (lambda k, n: make_pinn_problem(k), 40),
}


# --------------------------------------------------------------------------
# The two compiled training loops.


def make_softadapt_loop(problem: Problem):
  tx = optax.chain(
      sa.softadapt_track(problem.num_losses, order=ORDER, beta=BETA,
                         variant=VARIANT, epsilon=EPSILON),
      optax.adam(LEARNING_RATE),
  )
  grad_fn = sa.softadapt_value_and_grad(problem.loss_vec_fn, beta=BETA,
                                        variant=VARIANT, epsilon=EPSILON)

  def step(carry, batch):
    params, opt_state = carry
    out = grad_fn(opt_state, params, batch)
    updates, opt_state = tx.update(out.grad, opt_state, params,
                                   losses=out.losses)
    return (optax.apply_updates(params, updates), opt_state), out.weights

  return tx, step


def make_fixed_loop(problem: Problem):
  tx = optax.adam(LEARNING_RATE)
  w_fixed = jnp.full((problem.num_losses,), 1.0 / problem.num_losses)
  vg = jax.value_and_grad(
      lambda p, b: jnp.dot(w_fixed, problem.loss_vec_fn(p, b)))

  def step(carry, batch):
    params, opt_state = carry
    _, grad = vg(params, batch)
    updates, opt_state = tx.update(grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  return tx, step


def compile_scan(problem: Problem, make_loop, steps: int, keep_ys: bool = False):
  """The compiled ``run(params, opt_state, data) -> (params, opt_state, ys)``.

  Returns ``(compiled, args)``; compiled ahead of time, so that its cost
  analysis and its optimized HLO are at hand.
  """
  tx, step = make_loop(problem)

  if problem.batches is not None:
    xs = jax.tree.map(lambda a: a[:steps], problem.batches)

    def run(params, opt_state, xs):
      carry, ys = jax.lax.scan(step, (params, opt_state), xs)
      return (*carry, ys if keep_ys else None)
    args = (xs,)
  else:

    def run(params, opt_state, fixed):
      body = lambda carry, _: step(carry, fixed)
      carry, ys = jax.lax.scan(body, (params, opt_state), None, length=steps)
      return (*carry, ys if keep_ys else None)
    args = (problem.fixed,)

  args = (problem.params, tx.init(problem.params), *args)
  return jax.jit(run).lower(*args).compile(), args


def time_call(fn, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


class Overhead(NamedTuple):
  model: str
  k: int
  sa_med: float  # seconds per step
  sa_min: float
  fx_med: float
  fx_min: float
  paired: float  # median over repeats of sa/fixed
  flops_ratio: float  # XLA cost analysis of one step, sa/fixed
  extra_fusions: int  # fused kernels in the optimized HLO, sa - fixed


def _static_cost(compiled) -> tuple[float, int]:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))), compiled.as_text().count(
      " fusion(")


def measure_overhead(problem: Problem, steps: int,
                     reps: int) -> tuple[Overhead, Any]:
  """Interleaved timing of the two scanned loops; also returns ours, compiled."""
  run_sa, args_sa = compile_scan(problem, make_softadapt_loop, steps)
  run_fx, args_fx = compile_scan(problem, make_fixed_loop, steps)
  flops_sa, fusions_sa = _static_cost(run_sa)
  flops_fx, fusions_fx = _static_cost(run_fx)
  for _ in range(2):  # warm up (compiled already)
    time_call(run_sa, args_sa)
    time_call(run_fx, args_fx)
  t_sa, t_fx = [], []
  for r in range(reps):
    order = ((run_sa, args_sa, t_sa), (run_fx, args_fx, t_fx))
    for fn, args, out in order if r % 2 == 0 else order[::-1]:
      out.append(time_call(fn, args) / steps)
  return Overhead(
      problem.name, problem.num_losses,
      statistics.median(t_sa), min(t_sa), statistics.median(t_fx), min(t_fx),
      statistics.median(a / b for a, b in zip(t_sa, t_fx, strict=True)),
      flops_sa / flops_fx, fusions_sa - fusions_fx,
  ), (run_sa, args_sa)


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
  ours_w = np.asarray(run_w(*args_w)[2])
  diff = float(np.max(np.abs(ours_w - np.stack(check.used))))

  loops = {m: HostLoop(problem, oracle, m) for m in ("host", "lean", "plain")}
  for loop in loops.values():
    loop.run(3)  # compile and warm up
  time_call(sa_run, sa_args)
  times: dict[str, list[float]] = {m: [] for m in ("ours", *loops)}
  for r in range(reps):
    order = ["ours", *loops]
    for m in order if r % 2 == 0 else order[::-1]:
      if m == "ours":
        times[m].append(time_call(sa_run, sa_args) / sa_steps)
      else:
        times[m].append(loops[m].run(chunk))
  med = {m: statistics.median(t) for m, t in times.items()}

  def paired(m):
    return statistics.median(
        a / b for a, b in zip(times[m], times["ours"], strict=True))

  return HostComparison(med["ours"], med["host"], med["lean"], med["plain"],
                        paired("host"), paired("lean"), diff)


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
  """Per step cost of ``softadapt_weights`` alone inside a scan."""

  @jax.jit
  def run(state, losses):
    def body(state, loss_vec):
      w, state = sa.softadapt_weights(state, loss_vec, beta=BETA, variant=VARIANT,
                                      epsilon=EPSILON)
      return state, w
    return jax.lax.scan(body, state, losses)

  state = sa.init_state(k, order=ORDER)
  losses = jax.random.uniform(jax.random.PRNGKey(0), (steps, k)) + 0.5
  time_call(run, (state, losses))
  return statistics.median(time_call(run, (state, losses)) / steps
                           for _ in range(reps))


# --------------------------------------------------------------------------


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "optax", "softadapt", "keras"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  out["softadapt_jax"] = f"{sa.__version__} ({_git_describe()})"
  return out


def _git_describe() -> str:
  """The repository's commit, and whether the package differs from it."""
  import subprocess  # only here: the benchmark runs without git too

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
        capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "softadapt_jax"], cwd=root,
        check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "no git"
  return f"commit {head}" + (", package modified" if dirty else "")


def us(seconds: float) -> str:
  return f"{seconds * 1e6:,.1f}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run of a few seconds")
  parser.add_argument("--single-thread", action="store_true",
                      help="one XLA thread, pinned to one core: steadier "
                      "timings on a small, busy machine")
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
  parser.add_argument("--models", nargs="+", default=list(MODELS),
                      choices=list(MODELS))
  parser.add_argument("--steps", type=int, default=None,
                      help="scan steps per timed call (default per model)")
  parser.add_argument("--reps", type=int, default=None,
                      help="timed calls per variant (interleaved)")
  parser.add_argument("--host-chunk", type=int, default=None,
                      help="host-loop steps per timed chunk")
  parser.add_argument("--host-reps", type=int, default=None,
                      help="timed chunks per host loop (interleaved)")
  args = parser.parse_args(argv)

  if args.quick:
    steps = dict.fromkeys(MODELS, 3)
    reps, host_chunk, host_reps, check_steps, ks = 2, 3, 2, 3, [4]
  else:
    steps = {m: spec[1] for m, spec in MODELS.items()}
    reps, host_chunk, host_reps, check_steps, ks = 20, 50, 6, 50, args.ks
  if args.steps is not None:
    steps = dict.fromkeys(steps, args.steps)
  reps = args.reps or reps
  host_chunk = args.host_chunk or host_chunk
  host_reps = args.host_reps or host_reps

  def make(model: str, k: int, n: int) -> Problem:
    return MODELS[model][0](k, n)

  print("# SoftAdapt step benchmark\n")
  now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  print(f"- date: {now}")
  print(f"- command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
  print(f"- machine: {platform.platform()}, processor "
        f"{platform.processor() or platform.machine()!r}, "
        f"{os.cpu_count()} CPUs, jax devices {jax.devices()}")
  print("- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
  affinity = (sorted(os.sched_getaffinity(0))
              if hasattr(os, "sched_getaffinity") else "n/a")
  print(f"- settings: variant={VARIANT}, beta={BETA}, order={ORDER}, "
        f"adam({LEARNING_RATE}), scan steps per call {steps}, "
        f"{reps} interleaved repeats per variant, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}, CPU affinity {affinity}")
  print("- load average at start (1, 5, 15 min): "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + "\n")

  # 1. Overhead.
  print("## 1. Overhead of SoftAdapt (one-VJP route) over a fixed-weight sum\n")
  print("Time per step inside `lax.scan`, microseconds. Ratios: SoftAdapt / "
        "fixed; `paired` is the median of the per-repeat ratios and gives the "
        "`overhead` column. `flops` and `+fusions`: XLA's cost analysis of "
        "the compiled step (SoftAdapt / fixed) and the number of extra fused "
        "kernels in its optimized HLO: noise-free.\n")
  print("| model | K | SoftAdapt median | SoftAdapt min | fixed median | "
        "fixed min | ratio (median) | ratio (min) | ratio (paired) | overhead "
        "| flops | +fusions |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  compiled: dict[tuple[str, int], Any] = {}
  for model in args.models:
    for k in ks:
      if model == "pinn" and k < 2:
        continue
      o, compiled[model, k] = measure_overhead(
          make(model, k, steps[model]), steps[model], reps)
      print(f"| {model} | {k} | {us(o.sa_med)} | {us(o.sa_min)} | "
            f"{us(o.fx_med)} | {us(o.fx_min)} | {o.sa_med / o.fx_med:.3f} | "
            f"{o.sa_min / o.fx_min:.3f} | {o.paired:.3f} | "
            f"{(o.paired - 1) * 100:+.1f}% | {o.flops_ratio:.5f} | "
            f"{o.extra_fusions} |", flush=True)
  print()
  print("SoftAdapt weights alone (`softadapt_weights` in a scan), per step: "
        + ", ".join(f"K={k}: {us(time_weights_alone(k, 2000, reps))} us"
                    for k in ks))
  print()

  # 2. Versus the reference on the host.
  oracle = make_oracle()
  k_host = 4 if 4 in ks else ks[0]
  print("## 2. Our scanned loop versus a host loop with the reference oracle\n")
  print(f"K={k_host}, microseconds per step (median of {host_reps} interleaved "
        f"chunks of {host_chunk} host steps, about {host_reps * host_chunk} "
        "steps per host loop) and speedup = host / ours (paired: median of "
        "per-chunk ratios). `host`: jitted forward + oracle weights on the "
        "host + jitted weighted step (same weights as ours); `lean`: one "
        "jitted step returning the losses, oracle weights used one step "
        "late; `plain`: the jitted step with fixed weights, no oracle (the "
        "floor of a host loop). `w diff`: max abs difference between the "
        f"weights of `host` and ours over the first {check_steps} steps from "
        "the same start.\n")
  print("| model | ours (scan) | host | lean | plain | speedup vs host "
        "| paired | speedup vs lean | paired | w diff |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for model in args.models:
    if (model, k_host) not in compiled:
      continue
    problem = make(model, k_host, max(steps[model], check_steps))
    run_sa, args_sa = compiled[model, k_host]
    c = compare_with_host(problem, oracle, run_sa, args_sa, steps[model],
                          host_chunk, host_reps, check_steps)
    print(f"| {model} | {us(c.ours)} | {us(c.host)} | {us(c.lean)} | "
          f"{us(c.plain)} | {c.host / c.ours:.2f}x | {c.paired_host:.2f}x | "
          f"{c.lean / c.ours:.2f}x | {c.paired_lean:.2f}x | "
          f"{c.weights_diff:.1e} |", flush=True)
  print()
  print("Reference oracle call alone (`get_component_weights`, median): "
        + ", ".join(f"K={k}: {us(time_oracle_call(oracle, k, 50))} us"
                    for k in ks))
  print("\nLoad average at the end (1, 5, 15 min): "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
