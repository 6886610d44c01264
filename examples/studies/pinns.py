"""Study 4: PINNs with analytic solutions, equal weights vs SoftAdapt and its family.

Three problems, each a loss vector of mean squared terms:

- **1D Poisson** ``-u'' = f`` on ``[0, 1]``, ``u = sin(6 pi x) + 1 + 2 x``
  (the demo ``examples/pinn_poisson.py``): ``[residual, boundary]``.
- **1D viscous Burgers** ``u_t + u u_x = nu u_xx`` on ``[-1, 1] x [0, 1]``,
  ``nu = 0.01 / pi``, ``u(x, 0) = -sin(pi x)``, ``u(+-1, t) = 0``:
  ``[residual, boundary, initial]``. The reference solution is the Cole-Hopf
  formula, computed here by quadrature (:func:`burgers_reference`).
- **2D Helmholtz** (Wang, Teng & Perdikaris 2021) ``u_xx + u_yy + k^2 u = q``
  on ``[-1, 1]^2``, ``u = sin(a1 pi x) sin(a2 pi y)``, ``a1 = 1``, ``a2 = 4``,
  ``k = 1``, ``q`` from the exact ``u``: ``[residual, boundary]``.

Every weighting method is a rule of ``softadapt_jax``: equal weights
(``sa.equal_weights(K, scale_by_num_losses=False)``), SoftAdapt variants
(``sa.softadapt``), and one row per rule of the loss-history family
(``sa.softadapt(K, log_losses=True)``, ``sa.ratio_softadapt``, ``sa.dwa``,
``sa.relobralo``, ``sa.random_weighting``, each at its defaults with weights
summing to 1), all trained by the library's one route
(``sa.weighted_value_and_grad`` and ``sa.track_weights``). To make the whole
grid affordable on a CPU, all methods of one (problem, optimizer, sampling)
cell run in ONE compiled ``lax.scan``, vmapped over (method, seed): the
methods are combined into one rule (:func:`switch_rule`, written with the
library's rule kit ``sa.LossWeighting``) that keeps every method's state and
picks the method by ``lax.switch`` on a (batched) index, so every method's
weights are computed at each step (they cost nothing next to the network) and
the selected ones are applied. The time per step of each method is measured
separately, with the index not batched (``lax.switch`` then runs only the
selected rule).

Optimizers: Adam (step size 1e-3) and plain SGD (constant step sizes, the best
of 1e-6 ... 1e-2 for equal weights in a 600-step probe: 1e-5 for Poisson and
Helmholtz, 1e-2 for Burgers); collocation: ``full`` (a fixed set drawn
once) or ``resampled`` (a fresh uniform draw of the same size at every step).
Metric: the relative L2 error against the exact solution on a test grid.

Run (from the repository root)::

  PYTHONPATH=. python -m examples.studies.pinns          # ~10 min on 2 cores
  PYTHONPATH=. python -m examples.studies.pinns --smoke  # seconds
"""

from __future__ import annotations

import collections
import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa
from examples.studies import _common as C
from examples.studies import _digits as D

# ---------------------------------------------------------------------------
# Networks.
# ---------------------------------------------------------------------------


def mlp_scalar(params: Any, *inputs: jax.Array) -> jax.Array:
  """A tanh MLP from scalar inputs (already scaled to about [-1, 1]) to a scalar."""
  h = jnp.stack(inputs)
  return D.mlp(params, h, act=jnp.tanh)[0]


# ---------------------------------------------------------------------------
# Problems.
# ---------------------------------------------------------------------------


class Problem(NamedTuple):
  name: str
  components: tuple[str, ...]
  sizes: tuple[int, ...]
  sample: Callable[[jax.Array], dict[str, jax.Array]]  # key -> points
  loss: Callable[[Any, dict[str, jax.Array]], jax.Array]
  error: Callable[[Any], jax.Array]
  lr: dict[str, float]


# 1D Poisson ---------------------------------------------------------------

_FREQ = 6.0 * math.pi


def poisson_exact(x):
  return jnp.sin(_FREQ * x) + 1.0 + 2.0 * x


def poisson_problem(num_interior: int = 128) -> Problem:
  def u(params, x):
    return mlp_scalar(params, 2.0 * x - 1.0)

  def sample(key):
    return {"x": jax.random.uniform(key, (num_interior,))}

  def loss(params, batch):
    x = batch["x"]
    u_xx = jax.vmap(jax.grad(jax.grad(u, 1), 1), (None, 0))(params, x)
    res = jnp.mean((u_xx + _FREQ**2 * jnp.sin(_FREQ * x)) ** 2)
    xb = jnp.array([0.0, 1.0])
    bnd = jnp.mean((jax.vmap(u, (None, 0))(params, xb) - poisson_exact(xb)) ** 2)
    return jnp.stack([res, bnd])

  x_test = jnp.linspace(0.0, 1.0, 1001)

  def error(params):
    exact = poisson_exact(x_test)
    pred = jax.vmap(u, (None, 0))(params, x_test)
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)

  return Problem(
      "Poisson 1D", ("residual", "boundary"), (1, 32, 32, 32, 1), sample, loss,
      error, {"adam": 1e-3, "sgd": 1e-5},
  )


# 1D viscous Burgers -----------------------------------------------------------

NU = 0.01 / math.pi


def burgers_reference(
    x: np.ndarray, t: np.ndarray, nu: float = NU, num_nodes: int = 4001
) -> np.ndarray:
  """Cole-Hopf solution of Burgers with ``u(x, 0) = -sin(pi x)``, ``[len(t), len(x)]``.

  .. math::
    u(x, t) = -\\frac{\\int \\sin(\\pi (x - \\eta)) \\, \\phi(x - \\eta)
      e^{-\\eta^2 / 4 \\nu t} d\\eta}{\\int \\phi(x - \\eta)
      e^{-\\eta^2 / 4 \\nu t} d\\eta}, \\quad
    \\phi(y) = e^{-\\cos(\\pi y) / (2 \\pi \\nu)}

  by the trapezoid rule in ``z = eta / sqrt(4 nu t)`` on ``[-14, 14]`` (the
  Gaussian factor is below ``e^-196`` outside, while ``phi`` varies by at most
  ``e^(1 / (pi nu)) = e^100``), in float64 with the exponents shifted by their
  maximum. ``t = 0`` gives the initial condition.
  """
  x = np.asarray(x, np.float64)
  z = np.linspace(-14.0, 14.0, num_nodes)
  out = np.empty((len(t), len(x)))
  for i, ti in enumerate(np.asarray(t, np.float64)):
    if ti == 0.0:
      out[i] = -np.sin(np.pi * x)
      continue
    y = x[:, None] - math.sqrt(4.0 * nu * ti) * z[None, :]
    log_w = -np.cos(np.pi * y) / (2.0 * np.pi * nu) - z[None, :] ** 2
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    out[i] = -np.sum(np.sin(np.pi * y) * w, axis=1) / np.sum(w, axis=1)
  return out


@functools.lru_cache(maxsize=2)
def _burgers_test_grid(nx: int = 256, nt: int = 101):
  x = np.linspace(-1.0, 1.0, nx)
  t = np.linspace(0.0, 1.0, nt)
  return x, t, burgers_reference(x, t)


def burgers_problem(num_residual: int = 256, num_edge: int = 64) -> Problem:
  def u(params, x, t):
    return mlp_scalar(params, x, 2.0 * t - 1.0)

  def sample(key):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    return {
        "x": jax.random.uniform(k1, (num_residual,), minval=-1.0, maxval=1.0),
        "t": jax.random.uniform(k2, (num_residual,)),
        "tb": jax.random.uniform(k3, (num_edge,)),
        "xb": jnp.where(jax.random.bernoulli(k4, 0.5, (num_edge,)), 1.0, -1.0),
        "x0": jax.random.uniform(k5, (num_edge,), minval=-1.0, maxval=1.0),
    }

  def residual(params, x, t):
    u_val, (u_x, u_t) = jax.value_and_grad(u, (1, 2))(params, x, t)
    u_xx = jax.grad(jax.grad(u, 1), 1)(params, x, t)
    return u_t + u_val * u_x - NU * u_xx

  def loss(params, b):
    res = jnp.mean(jax.vmap(residual, (None, 0, 0))(params, b["x"], b["t"]) ** 2)
    ub = jax.vmap(u, (None, 0, 0))(params, b["xb"], b["tb"])
    u0 = jax.vmap(u, (None, 0, 0))(params, b["x0"], jnp.zeros_like(b["x0"]))
    return jnp.stack([
        res, jnp.mean(ub**2), jnp.mean((u0 + jnp.sin(jnp.pi * b["x0"])) ** 2)
    ])

  x, t, ref = _burgers_test_grid()
  xx, tt = (jnp.asarray(a.ravel(), jnp.float32) for a in np.meshgrid(x, t))
  ref = jnp.asarray(ref.ravel(), jnp.float32)

  def error(params):
    pred = jax.vmap(u, (None, 0, 0))(params, xx, tt)
    return jnp.linalg.norm(pred - ref) / jnp.linalg.norm(ref)

  return Problem(
      "Burgers 1D", ("residual", "boundary", "initial"), (2, 32, 32, 32, 1),
      sample, loss, error, {"adam": 1e-3, "sgd": 1e-2},
  )


# 2D Helmholtz ------------------------------------------------------------------

A1, A2, K_HELM = 1.0, 4.0, 1.0


def helmholtz_exact(x, y):
  return jnp.sin(A1 * jnp.pi * x) * jnp.sin(A2 * jnp.pi * y)


def helmholtz_source(x, y):
  return (K_HELM**2 - (A1**2 + A2**2) * jnp.pi**2) * helmholtz_exact(x, y)


def helmholtz_problem(num_residual: int = 128, num_edge: int = 128) -> Problem:
  def u(params, x, y):
    return mlp_scalar(params, x, y)

  def sample(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    xy = jax.random.uniform(k1, (num_residual, 2), minval=-1.0, maxval=1.0)
    s = jax.random.uniform(k2, (num_edge,), minval=-1.0, maxval=1.0)
    side = jax.random.randint(k3, (num_edge,), 0, 4)
    del k4
    sign = jnp.where(side % 2 == 0, -1.0, 1.0)
    xb = jnp.where(side < 2, sign, s)
    yb = jnp.where(side < 2, s, sign)
    return {"x": xy[:, 0], "y": xy[:, 1], "xb": xb, "yb": yb}

  def residual(params, x, y):
    u_xx = jax.grad(jax.grad(u, 1), 1)(params, x, y)
    u_yy = jax.grad(jax.grad(u, 2), 2)(params, x, y)
    return u_xx + u_yy + K_HELM**2 * u(params, x, y) - helmholtz_source(x, y)

  def loss(params, b):
    res = jnp.mean(jax.vmap(residual, (None, 0, 0))(params, b["x"], b["y"]) ** 2)
    ub = jax.vmap(u, (None, 0, 0))(params, b["xb"], b["yb"])
    return jnp.stack([res, jnp.mean(ub**2)])

  g = jnp.linspace(-1.0, 1.0, 101)
  xx, yy = (a.ravel() for a in jnp.meshgrid(g, g))
  exact = helmholtz_exact(xx, yy)

  def error(params):
    pred = jax.vmap(u, (None, 0, 0))(params, xx, yy)
    return jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)

  return Problem(
      "Helmholtz 2D", ("residual", "boundary"), (2, 50, 50, 50, 1), sample, loss,
      error, {"adam": 1e-3, "sgd": 1e-5},
  )


PROBLEMS = {
    "poisson": poisson_problem,
    "burgers": burgers_problem,
    "helmholtz": helmholtz_problem,
}

# ---------------------------------------------------------------------------
# Methods and training.
# ---------------------------------------------------------------------------


def methods_for(num_losses: int, smoke: bool = False) -> dict[str, sa.LossWeighting]:
  """Equal weights, SoftAdapt variants, then the family rules; every rule's
  weights sum to 1. Rows named ``SoftAdapt ...`` are the slope-based ones."""
  methods = {"equal weights": sa.equal_weights(num_losses, scale_by_num_losses=False)}
  settings = [("original", 0.1), ("original", 1.0), ("loss_weighted", 0.1),
              ("normalized", 0.1)]
  if smoke:
    settings = settings[:1]
  for variant, beta in settings:
    methods[f"SoftAdapt {variant}, beta {beta:g}"] = sa.softadapt(
        num_losses, beta=beta, variant=variant
    )
  family = list(C.family_rules(num_losses).items())
  return methods | dict(family[:1] if smoke else family)


class SwitchState(NamedTuple):
  """State of :func:`switch_rule`: every method's state, advanced together."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  weights: jax.Array
  num_skipped: jax.Array
  inner: Any  # a NamedTuple of the rules' states, one field per rule


def switch_rule(
    rules: Sequence[sa.LossWeighting],
    index: jax.Array,
    key: jax.Array | None = None,
) -> sa.LossWeighting:
  """The rule ``rules[index]``, for a traced (batched) ``index``.

  Written with the library's rule kit: the state holds every rule's state,
  ``lax.switch`` advances the selected one (under ``vmap`` with a batched
  index, every branch runs and the selected result is kept) and its weights
  are applied. ``key`` seeds the random rules when the state is initialised
  without one (``track_weights(rule).init`` passes none).
  """
  num_losses = rules[0].num_losses
  # A NamedTuple, not a plain tuple: sa.find_weighting_state reads states
  # made of arrays and NamedTuples.
  inner_type = collections.namedtuple(
      "SwitchInner", [f"rule_{i}" for i in range(len(rules))]
  )

  def init_fn(dtype, init_key):
    init_key = key if init_key is None else init_key
    inner = inner_type(*(r.init(key=init_key, dtype=dtype) for r in rules))
    return SwitchState(
        count=jnp.zeros((), jnp.int32),
        weights=jnp.stack([s.weights for s in inner])[index],
        num_skipped=jnp.zeros((), jnp.int32),
        inner=inner,
    )

  def update_fn(state, losses):
    def branch(i):
      def fn(inner):
        # The losses are already cast, averaged and finite: `prepared`.
        w, s, _, _ = rules[i].advance(inner[i], losses, prepared=True)
        return w.astype(state.weights.dtype), inner._replace(**{f"rule_{i}": s})

      return fn

    weights, inner = jax.lax.switch(
        index, [branch(i) for i in range(len(rules))], state.inner
    )
    return state._replace(weights=weights, inner=inner)

  return sa.LossWeighting(init_fn, update_fn, num_losses)


CELLS = (("adam", "full"), ("adam", "resampled"), ("sgd", "full"),
         ("sgd", "resampled"))


def adam_or_sgd(
    use_sgd: jax.Array, lr_adam: float, lr_sgd: float
) -> optax.GradientTransformation:
  """Adam, or plain SGD where ``use_sgd`` (traced) is true.

  Both updates are computed and one is selected, so that the optimizer can be
  a batched (vmapped) choice of one compiled program; the Adam moments are
  carried in both cases (unused by SGD).
  """
  adam = optax.adam(lr_adam)

  def update(updates, state, params=None):
    a_updates, state = adam.update(updates, state, params)
    updates = jax.tree.map(
        lambda a, g: jnp.where(use_sgd, -lr_sgd * g, a), a_updates, updates
    )
    return updates, state

  return optax.GradientTransformation(adam.init, update)


def make_train(
    problem: Problem,
    methods: Sequence[sa.LossWeighting],
    steps: int,
    every: int,
) -> Callable[[jax.Array, jax.Array, jax.Array], Any]:
  """``train(cell, method_index, seed) -> (final error, errors, losses, weights)``.

  ``cell`` indexes :data:`CELLS` (optimizer, collocation); all three arguments
  may be traced (batched), so one compiled program runs the whole grid.
  """
  use_sgd_of = jnp.array([opt == "sgd" for opt, _ in CELLS])
  resample_of = jnp.array([smp == "resampled" for _, smp in CELLS])

  def train(cell, index, seed):
    key = jax.random.key(seed)
    k_init, k_data = jax.random.split(key)
    params = D.init_mlp(k_init, problem.sizes)
    fixed_batch = problem.sample(jax.random.key(1234))
    rule = switch_rule(methods, index, jax.random.fold_in(key, 7))
    opt = adam_or_sgd(use_sgd_of[cell], problem.lr["adam"], problem.lr["sgd"])
    tx = optax.chain(sa.track_weights(rule), opt)
    grad_fn = sa.weighted_value_and_grad(problem.loss, rule)
    resample = resample_of[cell]

    def inner(carry, key):
      params, opt_state = carry
      fresh = problem.sample(key)
      batch = jax.tree.map(
          lambda a, b: jnp.where(resample, a, b), fresh, fixed_batch
      )
      out = grad_fn(opt_state, params, batch)  # one forward + one backward pass
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (out.losses, out.weights)

    def outer(carry, key):
      carry, (losses, w) = jax.lax.scan(inner, carry, jax.random.split(key, every))
      return carry, (problem.error(carry[0]), losses[-1], w[-1])

    carry = (params, tx.init(params))
    carry, (errors, losses, w) = jax.lax.scan(
        outer, carry, jax.random.split(k_data, steps // every)
    )
    return errors[-1], errors, losses, w

  return train


def time_per_step(problem: Problem, methods, steps: int) -> list[float]:
  """Milliseconds per step of one run of each method alone (Adam, full batch;
  compiled, the index not batched, so ``lax.switch`` runs only that rule)."""
  train = jax.jit(make_train(problem, methods, steps, steps))
  args = (jnp.int32(0), jnp.int32(0), jnp.int32(0))
  compiled = train.lower(*args).compile()
  out = []
  for i in range(len(methods)):
    times = [C.timed(compiled, jnp.int32(0), jnp.int32(i), jnp.int32(0))[1]
             for _ in range(2)]
    out.append(1e3 * min(times) / steps)
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the study; returns ``{problem: {cell: {method: metrics}}}``."""

  def add(parser):
    parser.add_argument("--problems", default="poisson,burgers,helmholtz")
    parser.add_argument("--steps", type=int, default=3000, help="steps per run")
    parser.add_argument("--optimizers", default="adam,sgd")
    parser.add_argument("--sampling", default="full,resampled")
    parser.add_argument("--timing-steps", type=int, default=200,
                        help="steps of the per-method timing runs")
    parser.add_argument("--tag", default="",
                        help="suffix of the result files (pinns_<tag>.md)")

  args = C.parse_common((__doc__ or "").splitlines()[0], argv, add)
  if args.smoke:
    args.steps, args.timing_steps = min(args.steps, 20), 0
  every = max(1, args.steps // 30)
  args.steps = max(args.steps, every)
  args.steps -= args.steps % every
  seeds = jnp.arange(args.seeds)
  wall = time.perf_counter()
  metrics: dict[str, Any] = {}
  sections = [
      "`PYTHONPATH=. python -m examples.studies.pinns"
      + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
      + f"`: {args.steps} steps per run, seeds "
      f"0-{args.seeds - 1}; relative L2 error against the exact solution as the "
      "geometric mean [min, max] over the seeds. Equal weights are 1/K each; "
      "every other rule's weights sum to 1 as well (scale_by_num_losses=False "
      "for a rule that scales its weights to K by default: the same rule with "
      "a K times smaller step size), so the step size means the same thing in "
      "every row. ms/step: one compiled run of that method alone "
      f"({args.timing_steps} steps, seed 0, the best of two timings).",
  ]
  figure_data = {}
  for pname in args.problems.split(","):
    problem = PROBLEMS[pname]()
    k = len(problem.components)
    rules = methods_for(k, args.smoke)
    methods = list(rules)  # the row names
    metrics[problem.name] = {}
    rows_by_cell = {}
    cells = [i for i, (o, smp) in enumerate(CELLS)
             if o in args.optimizers.split(",") and smp in args.sampling.split(",")]
    train = make_train(problem, list(rules.values()), args.steps, every)
    fn = jax.jit(jax.vmap(jax.vmap(jax.vmap(train, (None, None, 0)),
                                   (None, 0, None)), (0, None, None)))
    (final, errors, _, weights), seconds = C.timed(
        fn, jnp.asarray(cells), jnp.arange(len(methods)), seeds
    )
    final, errors, weights = (np.asarray(a) for a in (final, errors, weights))
    print(f"{problem.name}: {seconds:.0f} s for {len(cells)} cells x "
          f"{len(methods)} methods x {args.seeds} seeds", flush=True)
    ms_per_step = (time_per_step(problem, list(rules.values()), args.timing_steps)
                   if args.timing_steps else [float("nan")] * len(methods))
    for j, c in enumerate(cells):
      cell = ", ".join(CELLS[c])
      metrics[problem.name][cell] = {
          m: {"rel_l2": final[j, i].tolist(), "ms_per_step": ms_per_step[i]}
          for i, m in enumerate(methods)
      }
      rows_by_cell[cell] = (final[j], weights[j])
      figure_data[(problem.name, cell)] = (methods, errors[j], weights[j], every)
    metrics[problem.name]["_seconds"] = seconds
    sections.append(_problem_section(problem, methods, rows_by_cell, ms_per_step,
                                     seconds))
  elapsed = time.perf_counter() - wall
  sections.append(f"Total wall time {elapsed:.0f} s on {C.environment()}.")
  name = "pinns" + (f"_{args.tag}" if args.tag else "") + (
      "_smoke" if args.smoke else "")
  C.write_markdown(
      os.path.join(args.out, f"{name}.md"),
      "Study 4: PINNs, equal weights vs SoftAdapt and the loss-history family",
      sections,
  )
  if not args.no_plot:
    plot(os.path.join(args.out, f"{name}.png"), figure_data)
  print("\n\n".join(sections))
  metrics["seconds"] = elapsed
  return metrics


def _geo(x: np.ndarray) -> float:
  x = np.where(np.isfinite(x), x, np.inf)
  return float(np.exp(np.mean(np.log(np.maximum(x, 1e-12)))))


def _problem_section(problem, methods, rows_by_cell, ms_per_step, seconds) -> str:
  cells = list(rows_by_cell)
  header = ["method", *[f"rel. L2, {c}" for c in cells], "ms / step"]
  rows = []
  for i, m in enumerate(methods):
    rows.append([m, *[C.geo_range(rows_by_cell[c][0][i]) for c in cells],
                 f"{ms_per_step[i]:.2f}" if np.isfinite(ms_per_step[i]) else "-"])
  notes = []
  for c in cells:
    final = rows_by_cell[c][0]
    geo = [_geo(final[i]) for i in range(len(methods))]
    eq = geo[0]
    best = int(np.argmin(geo[1:])) + 1
    sa_rows = [i for i, m in enumerate(methods) if m.startswith("SoftAdapt ")]
    best_sa = min(sa_rows, key=lambda i: geo[i])
    beaten = all(final[best].max() < final[0].min() for _ in [0])
    if geo[best] < eq:
      text = (
          f"best {methods[best]} {geo[best]:.2e} vs equal {eq:.2e} "
          f"({eq / geo[best]:.1f}x lower"
          + (", every seed of it below every seed of equal weights)" if beaten
             else ", but the seeds' ranges overlap)")
      )
    else:
      text = f"**nothing beats equal weights** ({eq:.2e})"
    sa_text = (
        f"best SoftAdapt-slope row {methods[best_sa]} {geo[best_sa]:.2e} "
        + ("(better than equal)" if geo[best_sa] < eq else
           "(**not better than equal**)")
    )
    notes.append(f"- {c}: {text}; {sa_text}.")
  return (
      f"## {problem.name}: components {', '.join(problem.components)}; MLP "
      f"{' -> '.join(map(str, problem.sizes))} (tanh); lr Adam "
      f"{problem.lr['adam']:g}, SGD {problem.lr['sgd']:g}\n\n"
      + C.markdown_table(header, rows) + "\n\n" + "\n".join(notes)
      + f"\n\nThe whole grid of this problem ran in {seconds:.0f} s (one "
      "compiled program, compilation included)."
  )


def plot(path: str, figure_data) -> None:
  """Error curves (median over seeds) per cell and the weights of seed 0."""
  plt = C.pyplot()
  keys = list(figure_data)
  problems = list(dict.fromkeys(p for p, _ in keys))
  cells = list(dict.fromkeys(c for _, c in keys))
  fig, axes = plt.subplots(len(problems), len(cells) + 1,
                           figsize=(4.2 * (len(cells) + 1), 3.4 * len(problems)),
                           layout="constrained", squeeze=False)
  for r, p in enumerate(problems):
    for c, cell in enumerate(cells):
      if (p, cell) not in figure_data:
        continue
      methods, errors, weights, every = figure_data[(p, cell)]
      ax = axes[r, c]
      t = every * np.arange(1, errors.shape[-1] + 1)
      for i, m in enumerate(methods):
        ax.semilogy(t, np.median(errors[i], axis=0), lw=1.4 if i == 0 else 0.9,
                    color="k" if i == 0 else f"C{i - 1}", label=m)
      ax.set(title=f"{p}: {cell}", xlabel="step", ylabel="rel. L2 (median)")
      if r == 0 and c == 0:
        ax.legend(fontsize=6)
    methods, errors, weights, every = figure_data[(p, cells[0])]
    ax = axes[r, -1]
    t = every * np.arange(1, weights.shape[2] + 1)
    for i, m in enumerate(methods[1:], start=1):
      w = weights[i, 0]
      ax.plot(t, w[:, 0] / w.sum(-1), color=f"C{i - 1}", lw=0.9, label=m)
    ax.set(title=f"{p}: residual weight (sum 1), seed 0, {cells[0]}",
           xlabel="step", ylim=(-0.02, 1.02))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


if __name__ == "__main__":
  main()
