"""Shared pieces of the benchmark scripts: report header, timing, models.

Importing this module first handles ``--single-thread`` (one XLA thread pinned
to one core: steadier timings on a small, shared machine), which must be set
before jax is imported. Scripts in this folder run as
``python benchmarks/<script>.py`` and import it as ``_bench_common``.
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
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import softadapt_jax as sa  # noqa: E402

# --------------------------------------------------------------------------
# Report header.


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def git_describe() -> str:
  """The repository's commit, and whether the package differs from it."""
  try:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "softadapt_jax"], cwd=ROOT,
        check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "no git"
  return f"commit {head}" + (", package modified" if dirty else "")


def versions(names: Sequence[str] = ()) -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "optax", *names):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  out["softadapt_jax"] = f"{sa.__version__} ({git_describe()})"
  return out


def load_average() -> str:
  return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def print_header(title: str, settings: str, packages: Sequence[str] = ()) -> None:
  """Prints the markdown header every script starts its report with."""
  print(f"# {title}\n")
  now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  print(f"- date: {now}")
  print(f"- command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
  print(f"- machine: {platform.platform()}, CPU {cpu_model()!r}, "
        f"{os.cpu_count()} CPUs, jax devices {jax.devices()}")
  print("- versions: " + ", ".join(
      f"{k} {v}" for k, v in versions(packages).items()))
  affinity = (sorted(os.sched_getaffinity(0))
              if hasattr(os, "sched_getaffinity") else "n/a")
  print(f"- settings: {settings}, XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}, CPU affinity {affinity}")
  print(f"- load average at start (1, 5, 15 min): {load_average()}\n",
        flush=True)


def print_footer() -> None:
  print(f"\nLoad average at the end (1, 5, 15 min): {load_average()}",
        flush=True)


# --------------------------------------------------------------------------
# Timing.


def time_call(fn: Callable[..., Any], args: Sequence[Any] = ()) -> float:
  """Wall time of ``fn(*args)``, blocking on its results."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def interleaved(timers: dict[str, Callable[[], float]],
                reps: int) -> dict[str, list[float]]:
  """Runs every timer ``reps`` times, ABAB..., the order flipped every repeat.

  Each timer returns one measurement (seconds). Drift and noise on a shared
  machine then hit all variants alike.
  """
  names = list(timers)
  out: dict[str, list[float]] = {n: [] for n in names}
  for r in range(reps):
    for n in names if r % 2 == 0 else names[::-1]:
      out[n].append(timers[n]())
  return out


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def paired(a: Sequence[float], b: Sequence[float]) -> float:
  """Median over repeats of ``a[i] / b[i]``."""
  return statistics.median(x / y for x, y in zip(a, b, strict=True))


def spread(xs: Sequence[float]) -> float:
  """Half the interquartile range over the median: a noise figure."""
  q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
  return (q[2] - q[0]) / 2 / statistics.median(xs)


def us(seconds: float) -> str:
  return f"{seconds * 1e6:,.1f}"


def mib(nbytes: float) -> str:
  return f"{nbytes / 2**20:,.2f}"


def memory(compiled: Any) -> dict[str, int]:
  """XLA's buffer assignment of a compiled program, in bytes."""
  m = compiled.memory_analysis()
  return {
      "temp": int(m.temp_size_in_bytes),
      "output": int(m.output_size_in_bytes),
      "argument": int(m.argument_size_in_bytes),
      "peak": int(getattr(m, "peak_memory_in_bytes", 0) or 0),
  }


# --------------------------------------------------------------------------
# Models: MLPs and a 2D Poisson PINN.


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  """He-scaled normal weights, zero biases."""
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True):
    params.append({
        "w": jax.random.normal(k, (m, n), jnp.float32) * np.sqrt(2.0 / m),
        "b": jnp.zeros((n,), jnp.float32),
    })
  return params


def apply_mlp(params: list[dict[str, jax.Array]], x: jax.Array,
              act: Callable[[jax.Array], jax.Array]) -> jax.Array:
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


class Problem(NamedTuple):
  name: str
  num_losses: int
  loss_vec_fn: Callable[..., jax.Array]  # (params, batch) -> [K]
  params: Any
  batches: Any  # pytree with a leading [steps] axis, or None
  fixed: Any  # batch pieces that never change (collocation points)
  # Per-component losses, each on its own slice of the batch:
  # component_fns[k](params, batch) == loss_vec_fn(params, batch)[k], but
  # computing only what component k needs. None where all share one forward.
  component_fns: Any = None


def batch_at(problem: Problem, i: int) -> Any:
  if problem.batches is None:
    return problem.fixed
  return jax.tree.map(lambda a: a[i], problem.batches)


def make_mlp_problem(num_losses: int, steps: int, seed: int = 0,
                     batch: int = 256, d_in: int = 32, width: int = 256,
                     depth: int = 3, name: str = "mlp") -> Problem:
  """K regression heads on a shared trunk; a fresh batch every step."""
  kp, kx, ka = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = init_mlp(kp, [d_in, *[width] * depth, num_losses])
  # Targets of different difficulty: t_k = sin(freq_k * <a_k, x>).
  a = jax.random.normal(ka, (d_in, num_losses), jnp.float32) / np.sqrt(d_in)
  freqs = jnp.linspace(0.5, 3.0, num_losses, dtype=jnp.float32)
  x = jax.random.normal(kx, (steps, batch, d_in), jnp.float32)
  t = jnp.sin(freqs * (x @ a))

  def loss_vec_fn(params, batch):
    xb, tb = batch
    y = apply_mlp(params, xb, jax.nn.gelu)
    return jnp.mean((y - tb) ** 2, axis=0)  # [K]

  return Problem(name, num_losses, loss_vec_fn, params, (x, t), None)


def poisson_source(xy: jax.Array) -> jax.Array:
  """``f = -Lap u`` for the exact solution ``u = sin(pi x) sin(pi y)``."""
  return (2 * np.pi**2 * jnp.sin(np.pi * xy[..., 0])
          * jnp.sin(np.pi * xy[..., 1]))


def poisson_exact(xy: jax.Array) -> jax.Array:
  return jnp.sin(np.pi * xy[..., 0]) * jnp.sin(np.pi * xy[..., 1])


def square_boundary(key: jax.Array, n: int) -> jax.Array:
  """``n`` random points on the boundary of the unit square, ``[n, 2]``."""
  kt, ks = jax.random.split(key)
  t = jax.random.uniform(kt, (n,), jnp.float32)
  side = jax.random.randint(ks, (n,), 0, 4)
  zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
  bx = jnp.select([side == 0, side == 1, side == 2], [zeros, ones, t], t)
  by = jnp.select([side == 0, side == 1, side == 2], [t, t, zeros], ones)
  return jnp.stack([bx, by], axis=-1)


def pinn_u(params: Any, xy: jax.Array) -> jax.Array:
  """The PINN's scalar output at one point ``[2]``."""
  return apply_mlp(params, xy, jnp.tanh)[0]


def pinn_laplacian(params: Any, xy: jax.Array) -> jax.Array:
  """``u_xx + u_yy`` at one point, by forward-over-forward ``jvp``."""
  def d2(e):
    du = lambda z: jax.jvp(lambda w: pinn_u(params, w), (z,), (e,))[1]
    return jax.jvp(du, (xy,), (e,))[1]
  return d2(jnp.array([1.0, 0.0])) + d2(jnp.array([0.0, 1.0]))


def make_pinn_problem(num_losses: int, seed: int = 0, n_interior: int = 512,
                      n_boundary: int = 128, width: int = 64,
                      depth: int = 3, name: str = "pinn") -> Problem:
  """2D Poisson ``-Lap u = f`` on the unit square, ``u = 0`` on the boundary.

  ``K - 1`` residual terms (the interior points sorted by ``x`` and split into
  strips) plus one boundary term: every loss needs second derivatives, and
  each component has its own points (``component_fns``).
  """
  if num_losses < 2:
    raise ValueError("the PINN problem needs num_losses >= 2")
  kp, ki, kb = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = init_mlp(kp, [2, *[width] * depth, 1])
  n_res = num_losses - 1
  per = max(n_interior // n_res, 1)
  interior = jax.random.uniform(ki, (per * n_res, 2), jnp.float32)
  interior = interior[jnp.argsort(interior[:, 0])].reshape(n_res, per, 2)
  boundary = square_boundary(kb, n_boundary)

  def residual_loss(params, points):  # [n, 2] -> scalar
    lap = jax.vmap(lambda z: pinn_laplacian(params, z))(points)
    return jnp.mean((lap + poisson_source(points)) ** 2)

  def boundary_loss(params, points):
    ub = jax.vmap(lambda z: pinn_u(params, z))(points)
    return jnp.mean(ub**2)

  def loss_vec_fn(params, batch):
    # One vmap over all interior points, then the mean per strip: XLA:CPU
    # runs this up to 2x faster than a vmap over strips of a vmap over
    # points (batched matmuls with a leading strip axis).
    interior, boundary = batch
    points = interior.reshape(-1, 2)
    lap = jax.vmap(lambda z: pinn_laplacian(params, z))(points)
    sq = (lap + poisson_source(points)) ** 2
    residual = jnp.mean(sq.reshape(interior.shape[:2]), axis=1)  # [K - 1]
    return jnp.concatenate([residual, boundary_loss(params, boundary)[None]])

  def component(k):
    if k < n_res:
      return lambda params, batch: residual_loss(params, batch[0][k])
    return lambda params, batch: boundary_loss(params, batch[1])

  return Problem(name, num_losses, loss_vec_fn, params, None,
                 (interior, boundary),
                 tuple(component(k) for k in range(num_losses)))


def pinn_rel_l2(params: Any, n: int = 64) -> jax.Array:
  """Relative L2 error of the Poisson PINN against the exact solution."""
  g = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
  xy = jnp.stack(jnp.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  u = jax.vmap(lambda z: pinn_u(params, z))(xy)
  exact = poisson_exact(xy)
  return jnp.linalg.norm(u - exact) / jnp.linalg.norm(exact)
