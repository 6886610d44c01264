"""The Gramian aggregators, ours against torchjd's, on the same model and data.

Side by side in one run, per problem and ``K`` (3 and 16), for each of
``sa.mgda``, ``sa.upgrad``, ``sa.dualproj``, ``sa.conflict_free``,
``sa.pcgrad``, ``sa.imtl_g``, ``sa.aligned_mtl``, ``sa.cagrad`` and
``sa.nash_mtl`` (each in torchjd's convention, so that both sides compute the
same direction):

- ``ours``: ``sa.weighted_value_and_grad(loss_fn, rule, gradients=route)`` +
  ``sa.track_weights(rule)`` + ``optax.adam(1e-3)``, one jitted ``lax.scan``
  of ``--steps`` steps. The Gramian route (``unrolled``, ``map`` or
  ``jacrev``) is the fastest of the three on that problem (timed with
  ``upgrad``; the table gives each route's time and XLA temp memory);
- ``torchjd``: eager PyTorch, ``torch.optim.Adam(lr=1e-3)``, the same
  aggregator (torchjd 0.18) by its fastest correct route for that aggregator
  and problem, among: ``autojac`` (``autojac.backward(losses, inputs=params)``
  + ``autojac.jac_to_grad(params, aggregator)``), the same with
  ``parallel_chunk_size=1`` (``chunk 1``: one VJP at a time instead of
  ``torch.vmap``) and/or ``optimize_gramian_computation=True`` (``Gramian
  sum``: for the aggregators that only need the Gramian), and ``autogram``
  (``autogram.Engine(model, batch_dim=None).compute_gramian(losses)``, the
  aggregator's ``Weighting`` on it, ``losses.backward(weights)``; not for
  ConFIG and Nash-MTL, which need the Jacobian). A route is correct when it
  runs and its Gramian equals ours to 1e-10 at float64 at the first step;
  the fastest is chosen by a short timing of every correct route;
- the plain sum (``sa.equal_weights``: one VJP, ours; ``losses.sum()
  .backward()``, eager PyTorch), as the floor.

Problems: ``shared``, an MLP 32-256-256-256-K (GELU, tanh form on both
sides) whose K outputs are K regression heads on one trunk, one batch of 256
(as ``bench_gradient_rules.py``); ``split``, the 2D Poisson PINN of
``bench_gradient_rules.py`` (tanh 2-64-64-64-1, K - 1 residual strips on 512
points + the boundary on 128), ours written as K sub-computations, torch's as
one forward with nested ``torch.autograd.grad(create_graph=True)``. Both sides
start from the same weights (copied from ours) on the same data.

Correctness, at the first step and at float64 (ours under
``jax.enable_x64``, torch's model in double): the Gramian each torchjd route
feeds its aggregator (captured by a hook) against ours (the route's own
``"gramian"`` statistics), and the direction ``J^T w`` against ours, to the
levels of ``tests/test_aggregators*.py`` (their ``atol`` scaled by
``max |J|``); PCGrad with torchjd's own random orders replayed into
``sa.pcgrad_weights``. The float32 difference of the timed configuration is
printed too.

Timing: every variant restarts from the same weights and optimizer state
(torch: weights copied back, a fresh Adam, Nash-MTL's ``alpha`` back to
ones, outside the timed region), so both sides time steps 0 .. steps-1. The
variants are interleaved (``_bench_common.interleaved``) over ``--reps``
repeats; medians; each ratio is the median of the per-repeat ratios
(``_bench_common.paired``). The aggregator's own solve: ``sa.<name>_weights``
(``sa.config_weights``, ...) on the problem's float32 Gramian at the first
step, jitted, ``--solve-calls`` calls in one ``fori_loop`` (the Gramian
perturbed by ``1 + 1e-6 i`` per call so nothing is hoisted) less the same
loop without the solve, as a fraction of our step. Memory: XLA's temp
buffers of each compiled scanned program (ours); the peak of torch's CPU
allocations above the step's start during one step, from the profiler's
allocation events (torchjd).

Goals (issue "conflict-free aggregators"): at least 3x torchjd's steps per
second at K = 3 and K = 16; the aggregator's own solve under 5 % of a step
at K = 16.

Run (jax, softadapt_jax, torch and ``torchjd[full]`` in one venv)::

  .venv-bench/bin/python benchmarks/bench_aggregators.py --single-thread

``--tiny`` for a smoke run; ``--no-torch`` for our side only (no torch
needed).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import _bench_common as bc
import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa
from softadapt_jax._statistics import from_function

AGGREGATORS = ("mgda", "upgrad", "dualproj", "conflict_free", "pcgrad",
               "imtl_g", "aligned_mtl", "cagrad", "nash_mtl")
OUR_ROUTES = ("unrolled", "map", "jacrev")
TORCH_ROUTES = ("autojac", "autojac, chunk 1", "autojac, Gramian sum",
                "autojac, chunk 1, Gramian sum", "autogram")
LEARNING_RATE = 1e-3
# The routes' Gramians must agree to this at float64 for a route to count.
GRAMIAN_TOL = 1e-10
# Parity levels of tests/test_aggregators*.py (their torchjd golden tests):
# ("J", atol): max |d - d_t| <= atol * max |J|; ("allclose", rtol, atol):
# |d - d_t| <= atol * max |J| + rtol |d_t| entrywise; ("rel", tol):
# ||d - d_t|| <= tol ||d_t||.
LEVELS: dict[str, tuple[Any, ...]] = {
    "mgda": ("J", 1e-12),
    "upgrad": ("J", 1e-12),
    "dualproj": ("J", 1e-12),
    "conflict_free": ("allclose", 1e-10, 1e-12),
    "pcgrad": ("allclose", 1e-9, 1e-12),
    "imtl_g": ("allclose", 1e-9, 1e-12),
    "aligned_mtl": ("allclose", 1e-8, 1e-11),
    # torchjd's CLARABEL stops ~2e-4 from the optimum (test: 3e-4).
    "cagrad": ("rel", 3e-4),
    # torchjd's ECOS: 2 x 5e-6 on well-posed cases in the tests (which also
    # measured 2e-4 at K = 5 and 5e-2 at K = 16 where ECOS stops early).
    "nash_mtl": ("rel", 1e-5),
}


def level_text(name: str) -> str:
  lv = LEVELS[name]
  if lv[0] == "J":
    return f"max|d| diff <= {lv[1]:.0e} max|J|"
  if lv[0] == "allclose":
    return f"rtol {lv[1]:.0e}, atol {lv[2]:.0e} max|J|"
  return f"rel. norm <= {lv[1]:.0e}"


# --------------------------------------------------------------------------
# Our side.


def our_rule(name: str, k: int) -> sa.LossWeighting:
  """Each aggregator in torchjd's convention."""
  if name == "mgda":
    return sa.mgda(k, **sa.MGDA_CONVENTIONS["torchjd"])
  if name == "upgrad":
    return sa.upgrad(k)
  if name == "dualproj":
    return sa.dualproj(k)
  if name == "conflict_free":
    return sa.conflict_free(k)
  if name == "pcgrad":
    return sa.pcgrad(k, **sa.PCGRAD_CONVENTIONS["torchjd"])
  if name == "imtl_g":
    return sa.imtl_g(k)
  if name == "aligned_mtl":
    return sa.aligned_mtl(k, **sa.ALIGNED_MTL_CONVENTIONS["torchjd"])
  if name == "cagrad":
    return sa.cagrad(k, alpha=0.5, **sa.CAGRAD_CONVENTIONS["torchjd"])
  if name == "nash_mtl":
    return sa.nash_mtl(k, **sa.NASH_MTL_CONVENTIONS["torchjd"])
  raise ValueError(name)


def solve_fn(name: str, k: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``(G, i) -> w``: the rule's weights function, as the rule calls it."""
  if name == "mgda":
    return lambda g, i: sa.mgda_weights(g, **sa.MGDA_CONVENTIONS["torchjd"])
  if name == "upgrad":
    return lambda g, i: sa.upgrad_weights(g)
  if name == "dualproj":
    return lambda g, i: sa.dualproj_weights(g)
  if name == "conflict_free":
    return lambda g, i: sa.config_weights(g, jnp.ones((k,), g.dtype))
  if name == "pcgrad":
    def pcgrad(g, i):  # the rule's draw of the orders, then the weights
      key = jax.random.fold_in(jax.random.PRNGKey(0), i)
      orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(
          jax.random.split(key, k))
      return sa.pcgrad_weights(g, orders, **sa.PCGRAD_CONVENTIONS["torchjd"])
    return pcgrad
  if name == "imtl_g":
    return lambda g, i: sa.imtl_g_weights(g)
  if name == "aligned_mtl":
    return lambda g, i: sa.aligned_mtl_weights(
        g, **sa.ALIGNED_MTL_CONVENTIONS["torchjd"])
  if name == "cagrad":
    return lambda g, i: sa.cagrad_weights(
        g, 0.5, **sa.CAGRAD_CONVENTIONS["torchjd"])
  if name == "nash_mtl":
    conv = sa.NASH_MTL_CONVENTIONS["torchjd"]
    return lambda g, i: sa.nash_mtl_weights(
        g, jnp.ones((k,), g.dtype), max_norm=conv["max_norm"],
        clip_epsilon=conv["clip_epsilon"])[0]
  raise ValueError(name)


class Problem(NamedTuple):
  name: str
  k: int
  loss_fn: Callable[..., jax.Array]  # (params, batch) -> [K]
  params: Any  # list of {"w": [in, out], "b": [out]}
  batch: Any
  kind: str  # "shared" or "split"
  desc: str


def make_problem(kind: str, k: int, tiny: bool) -> Problem:
  if kind == "shared":
    p = bc.make_mlp_problem(k, steps=1, batch=32 if tiny else 256,
                            width=32 if tiny else 256)
    sizes = [p.params[0]["w"].shape[0]] + [layer["w"].shape[1]
                                           for layer in p.params]
    return Problem("shared", k, p.loss_vec_fn, p.params, bc.batch_at(p, 0),
                   kind, "MLP " + "-".join(map(str, sizes)) + ", GELU, batch "
                   f"{bc.batch_at(p, 0)[0].shape[0]}: K heads on one trunk")
  p = bc.make_pinn_problem(k, n_interior=64 if tiny else 512,
                           n_boundary=32 if tiny else 128,
                           width=16 if tiny else 64)
  fns = p.component_fns

  def losses(params, batch):
    return jnp.stack([fns[j](params, batch) for j in range(k)])

  interior, boundary = p.fixed
  sizes = [2] + [layer["w"].shape[1] for layer in p.params]
  return Problem("split", k, losses, p.params, p.fixed, kind,
                 "2D Poisson PINN " + "-".join(map(str, sizes)) + f", tanh, "
                 f"{k - 1} residual strips of {interior.shape[1]} points + "
                 f"boundary {boundary.shape[0]}, K sub-computations")


def run_fn(problem: Problem, rule: sa.LossWeighting, route: str, steps: int):
  """The compiled scanned training run: ``run(params, batch) -> params``."""
  tx = optax.chain(sa.track_weights(rule), optax.adam(LEARNING_RATE))
  grad_fn = sa.weighted_value_and_grad(problem.loss_fn, rule, gradients=route)

  def step(carry, _, batch):
    params, opt_state = carry
    out = grad_fn(opt_state, params, batch)
    updates, opt_state = tx.update(out.grad, opt_state, params,
                                   weighting_state=out.state)
    return (optax.apply_updates(params, updates), opt_state), None

  def run(params, batch):
    carry = (params, tx.init(params))
    return jax.lax.scan(functools.partial(step, batch=batch), carry, None,
                        length=steps)[0][0]

  return jax.jit(run).lower(problem.params, problem.batch).compile()


def flat_ours(tree: Any) -> np.ndarray:
  """Our parameter pytree in torch's order and layout (weight [out, in])."""
  return np.concatenate([
      np.concatenate([np.asarray(layer["w"]).T.ravel(),
                      np.asarray(layer["b"]).ravel()]) for layer in tree])


def cast_tree(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


class OurFirstStep:
  """Our Gramian, directions and weights at the first step, at ``dtype``.

  Build and call under ``jax.enable_x64(True)`` for float64. The Gramian is
  the route's own ``"gramian"`` statistics; each aggregator's direction and
  weights come from its rule through ``sa.weighted_value_and_grad`` (the
  step that is timed); PCGrad's from ``sa.pcgrad_weights`` with given orders
  (torchjd's) and one VJP.
  """

  def __init__(self, problem: Problem, route: str, dtype: Any):
    self.problem, self.route, self.dtype = problem, route, dtype
    self.params = cast_tree(problem.params, dtype)
    self.batch = cast_tree(problem.batch, dtype)
    k, loss_fn = problem.k, problem.loss_fn
    spec = sa.upgrad(k).statistics  # {"gramian"} on every parameter
    assert spec is not None

    @jax.jit
    def gramian(params, batch):
      return from_function(spec, lambda p: loss_fn(p, batch), params, k,
                           route=route)["gramian"]

    @jax.jit
    def vjp(params, batch, w):
      _, fn = jax.vjp(lambda p: loss_fn(p, batch), params)
      return fn(w.astype(dtype))[0]

    self.gramian = np.asarray(gramian(self.params, self.batch), np.float64)
    self._vjp = vjp

  def __call__(self, name: str, orders: np.ndarray | None = None
               ) -> dict[str, Any]:
    problem = self.problem
    if name == "pcgrad":
      assert orders is not None
      w = sa.pcgrad_weights(jnp.asarray(self.gramian, self.dtype),
                            jnp.asarray(orders, jnp.int32),
                            **sa.PCGRAD_CONVENTIONS["torchjd"])
      d = self._vjp(self.params, self.batch, w)
    else:
      rule = our_rule(name, problem.k)
      grad_fn = jax.jit(sa.weighted_value_and_grad(problem.loss_fn, rule,
                                                   gradients=self.route))
      out = grad_fn(rule.init(dtype=self.dtype), self.params, self.batch)
      w, d = out.weights, out.grad
    return {"gramian": self.gramian, "weights": np.asarray(w, np.float64),
            "direction": flat_ours(d).astype(np.float64)}


def solve_timer(name: str, k: int, gram: jax.Array, calls: int
                ) -> Callable[[], float]:
  """Seconds per call of the weights function on ``gram`` (loop less empty)."""
  fn = solve_fn(name, k)

  def loop(body_fn):
    @jax.jit
    def run(g):
      def body(i, acc):
        gi = g * (1 + i.astype(g.dtype) * 1e-6)
        return acc + jnp.sum(body_fn(gi, i))
      return jax.lax.fori_loop(0, calls, body, jnp.zeros((), g.dtype))
    return run

  with_solve = loop(fn)
  empty = loop(lambda g, i: jnp.diag(g))
  bc.time_call(with_solve, (gram,))
  bc.time_call(empty, (gram,))

  def timer() -> float:
    a = bc.time_call(with_solve, (gram,))
    b = bc.time_call(empty, (gram,))
    return max(a - b, 0.0) / calls

  return timer


# --------------------------------------------------------------------------
# The torch side.


def torch_aggregator(name: str, k: int) -> Any:
  from torchjd import aggregation as A

  return {
      "mgda": lambda: A.MGDA(),
      "upgrad": lambda: A.UPGrad(),
      "dualproj": lambda: A.DualProj(),
      "conflict_free": lambda: A.ConFIG(),
      "pcgrad": lambda: A.PCGrad(),
      "imtl_g": lambda: A.IMTLG(),
      "aligned_mtl": lambda: A.AlignedMTL(),
      "cagrad": lambda: A.CAGrad(c=0.5),
      "nash_mtl": lambda: A.NashMTL(n_tasks=k),
  }[name]()


def route_applies(name: str, route: str) -> bool:
  """Whether torchjd offers ``route`` for aggregator ``name``."""
  needs_gramian_only = "Gramian sum" in route or route == "autogram"
  return not (needs_gramian_only and name in ("conflict_free", "nash_mtl"))


def torch_model(problem: Problem, dtype: Any):
  """The model (weights copied from ours) and ``losses_fn(net) -> [K]``."""
  import torch

  act = (functools.partial(torch.nn.GELU, approximate="tanh")
         if problem.kind == "shared" else torch.nn.Tanh)
  layers: list[Any] = []
  for i, layer in enumerate(problem.params):
    w = np.asarray(layer["w"], np.float64)
    lin = torch.nn.Linear(*w.shape, dtype=dtype)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(w.T.copy()))
      lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"], np.float64)))
    layers.append(lin)
    if i < len(problem.params) - 1:
      layers.append(act())
  net = torch.nn.Sequential(*layers)

  def tensor(a):
    return torch.from_numpy(np.asarray(a, np.float64)).to(dtype)

  if problem.kind == "shared":
    x, t = (tensor(a) for a in problem.batch)

    def losses_fn(net):
      return ((net(x) - t) ** 2).mean(dim=0)

    return net, losses_fn

  interior, boundary = (np.asarray(a, np.float64) for a in problem.batch)
  n_res, per = interior.shape[:2]
  flat = interior.reshape(-1, 2)
  x_in, x_b = tensor(flat), tensor(boundary)
  # f = -Lap u for u = sin(pi x) sin(pi y), as bc.poisson_source.
  src = tensor(2 * np.pi**2 * np.sin(np.pi * flat[:, 0])
               * np.sin(np.pi * flat[:, 1]))

  def pinn_losses(net):
    x = x_in.clone().requires_grad_(True)
    u = net(x)[:, 0]
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
    (gy,) = torch.autograd.grad(g[:, 1].sum(), x, create_graph=True)
    res = gx[:, 0] + gy[:, 1] + src
    residual = (res**2).reshape(n_res, per).mean(dim=1)
    ub = net(x_b)[:, 0]
    return torch.cat([residual, (ub**2).mean()[None]])

  return net, pinn_losses


class TorchVariant:
  """One eager PyTorch training loop: a plain sum or an aggregator by a route."""

  def __init__(self, problem: Problem, name: str | None, route: str,
               dtype: Any = None, capture: bool = False):
    import torch

    self.torch = torch
    dtype = torch.float32 if dtype is None else dtype
    self.net, self.losses_fn = torch_model(problem, dtype)
    self.params = list(self.net.parameters())
    self.init = [p.detach().clone() for p in self.params]
    self.k, self.name, self.route = problem.k, name, route
    self.agg = None if name is None else torch_aggregator(name, problem.k)
    self.engine = None
    if route == "autogram":
      from torchjd.autogram import Engine

      self.engine = Engine(self.net, batch_dim=None)
    self.captured: dict[str, Any] = {}
    if capture and self.agg is not None and route != "autogram":
      # The Gramian torchjd's aggregator sees (or its Jacobian's).
      gramian_weighting = getattr(self.agg, "gramian_weighting", None)
      if gramian_weighting is not None:
        gramian_weighting.register_forward_pre_hook(
            lambda m, inp: self.captured.__setitem__("gramian", inp[0].detach()))
      else:
        self.agg.register_forward_pre_hook(
            lambda m, inp: self.captured.__setitem__(
                "gramian", (inp[0] @ inp[0].T).detach()))
    self.opt = torch.optim.Adam(self.params, lr=LEARNING_RATE)

  def direction(self) -> Any:
    """``.grad`` := the step's direction; returns torchjd's weights (or None)."""
    from torchjd.autojac import backward, jac_to_grad

    for p in self.params:
      p.grad = None
    losses = self.losses_fn(self.net)
    if self.agg is None:
      self.torch.autograd.backward(losses.sum(), inputs=self.params)
      return None
    if self.route == "autogram":
      assert self.engine is not None
      gram = self.engine.compute_gramian(losses)
      self.captured["gramian"] = gram.detach()
      weights = self.agg.gramian_weighting(gram)
      self.torch.autograd.backward(losses, weights, inputs=self.params)
      return weights
    backward(losses, inputs=self.params,
             parallel_chunk_size=1 if "chunk 1" in self.route else None)
    return jac_to_grad(self.params, self.agg,
                       optimize_gramian_computation="Gramian sum" in self.route)

  def step(self) -> None:
    self.direction()
    self.opt.step()

  def reset(self) -> None:
    """Back to the shared start: weights, a fresh Adam, the aggregator's state."""
    torch = self.torch
    with torch.no_grad():
      for p, p0 in zip(self.params, self.init, strict=True):
        p.copy_(p0)
    self.opt = torch.optim.Adam(self.params, lr=LEARNING_RATE)
    if self.name == "nash_mtl":
      # NashMTL.reset() would also drop its cvxpy problem (rebuilt at the next
      # call, 0.1-1 s): set its state alone back to the start.
      self.agg.weighting.prvs_alpha = np.ones(self.k, dtype=np.float32)
    torch.manual_seed(0)

  def run(self, steps: int) -> float:
    """Seconds for ``steps`` steps from the shared start (reset not timed)."""
    self.reset()
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return time.perf_counter() - t0

  def flat_grad(self) -> np.ndarray:
    return np.concatenate([p.grad.detach().double().reshape(-1).numpy()
                           for p in self.params])

  def peak_bytes(self) -> int:
    """Peak of the CPU allocations above the start, during one step."""
    from torch.profiler import ProfilerActivity, profile

    self.step()  # warm
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
      self.step()
    allocs = []

    def walk(node):
      extra = node.extra_fields
      if type(extra).__name__ == "_ExtraFields_Allocation":
        allocs.append((node.start_time_ns, extra.alloc_size))
      for child in node.children:
        walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
      walk(root)
    allocs.sort(key=lambda a: a[0])
    cur = peak = 0
    for _, size in allocs:
      cur += size
      peak = max(peak, cur)
    return peak


def torch_first_step(problem: Problem, name: str, route: str, dtype: Any
                     ) -> dict[str, Any]:
  """torchjd's Gramian, direction and weights at the first step."""
  import torch

  v = TorchVariant(problem, name, route, dtype, capture=True)
  rng = torch.get_rng_state()
  weights = v.direction()
  out: dict[str, Any] = {
      "gramian": v.captured["gramian"].double().numpy(),
      "direction": v.flat_grad(),
      "weights": None if weights is None else weights.double().numpy(),
  }
  if name == "pcgrad":  # replay torchjd's draws: one randperm(K) per i
    torch.set_rng_state(rng)
    out["orders"] = np.stack([torch.randperm(problem.k).numpy()
                              for _ in range(problem.k)])
  return out


def torch_max_jac(problem: Problem) -> float:
  """``max |J|`` at the start, float64 (eager: K ``torch.autograd.grad``)."""
  import torch

  net, losses_fn = torch_model(problem, torch.float64)
  params = list(net.parameters())
  losses = losses_fn(net)
  return max(
      max(float(g.abs().max()) for g in torch.autograd.grad(
          losses[i], params, retain_graph=True))
      for i in range(problem.k))


def compare(name: str, ours: dict[str, Any], theirs: dict[str, Any],
            max_j: float) -> dict[str, Any]:
  g_o, g_t = ours["gramian"], theirs["gramian"]
  g_err = float(np.max(np.abs(g_o - g_t)) / np.max(np.abs(g_t)))
  d_o, d_t = ours["direction"], theirs["direction"]
  diff = np.abs(d_o - d_t)
  err_j = float(np.max(diff) / max_j)
  rel = float(np.linalg.norm(d_o - d_t) / max(np.linalg.norm(d_t), 1e-300))
  lv = LEVELS[name]
  if lv[0] == "J":
    ok = err_j <= lv[1]
  elif lv[0] == "allclose":
    ok = bool(np.all(diff <= lv[2] * max_j + lv[1] * np.abs(d_t)))
  else:
    ok = rel <= lv[1]
  w_err = None
  if theirs.get("weights") is not None:
    w_err = float(np.max(np.abs(ours["weights"] - theirs["weights"]))
                  / max(np.max(np.abs(theirs["weights"])), 1e-300))
  return {"gramian": g_err, "err_j": err_j, "rel": rel, "ok": ok,
          "weights": w_err}


def first_error(e: BaseException) -> str:
  msg = " ".join(str(e).split())[:160].replace("`", "'").replace("|", "/")
  return f"{type(e).__name__}: {msg}"


# --------------------------------------------------------------------------
# One problem and K.


def bench_config(args, kind: str, k: int, threads: int) -> dict[str, Any]:
  problem = make_problem(kind, k, args.tiny)
  res: dict[str, Any] = {"desc": problem.desc}
  names = [a for a in AGGREGATORS if a in args.aggregators]
  print(f"\n## {kind}, K = {k}\n\n{problem.desc}; "
        f"{sum(int(np.size(x)) for x in jax.tree.leaves(problem.params)):,} "
        "parameters.\n", flush=True)

  # 1. Our Gramian route: each route's time (with upgrad) and memory.
  t0 = time.perf_counter()
  plain = run_fn(problem, sa.equal_weights(k), "unrolled", args.steps)
  route_runs = {r: run_fn(problem, our_rule("upgrad", k), r, args.steps)
                for r in OUR_ROUTES}
  compile_s = time.perf_counter() - t0
  for run in (plain, *route_runs.values()):
    bc.time_call(run, (problem.params, problem.batch))
  route_times = bc.interleaved(
      {r: functools.partial(bc.time_call, run, (problem.params, problem.batch))
       for r, run in route_runs.items()}, max(3, args.reps // 2))
  best = min(OUR_ROUTES, key=lambda r: bc.median(route_times[r]))
  res["our_route"] = best
  res["our_route_us"] = {r: bc.median(t) / args.steps
                         for r, t in route_times.items()}
  res["our_temp"] = {"plain sum": bc.memory(plain)["temp"]}
  res["our_temp"].update({r: bc.memory(run)["temp"]
                          for r, run in route_runs.items()})
  print(f"### Our Gramian routes (UPGrad, {args.steps}-step scan; the five "
        f"programs compiled in {compile_s:.1f} s)\n")
  print("| route | us/step | XLA temp MiB (scanned program) |")
  print("|---|---:|---:|")
  print(f"| plain sum (one VJP) | - | {bc.mib(res['our_temp']['plain sum'])} |")
  for r in OUR_ROUTES:
    mark = " (chosen)" if r == best else ""
    print(f"| {r}{mark} | {bc.us(res['our_route_us'][r])} | "
          f"{bc.mib(res['our_temp'][r])} |")
  print(flush=True)

  # 2. Correctness at the first step (float64), every torchjd route.
  chosen: dict[str, str] = {}
  torch_checks: dict[str, Any] = {}
  if not args.no_torch:
    import torch

    route_ok: dict[tuple[str, str], str | None] = {}
    route_errors: dict[tuple[str, str], list[str]] = {}
    max_j = torch_max_jac(problem)
    with jax.enable_x64(True):
      ours64 = OurFirstStep(problem, best, jnp.float64)
    for name in names:
      comps = []
      ours = None
      for route in TORCH_ROUTES:
        if not route_applies(name, route):
          continue
        try:
          theirs = torch_first_step(problem, name, route, torch.float64)
        except Exception as e:  # reported: the route is not available here
          route_ok[name, route] = first_error(e)
          route_errors.setdefault((route, first_error(e)), []).append(name)
          continue
        if ours is None or name == "pcgrad":  # PCGrad: torchjd's new orders
          with jax.enable_x64(True):
            ours = ours64(name, theirs.get("orders"))
        c = compare(name, ours, theirs, max_j)
        if c["gramian"] > GRAMIAN_TOL:
          msg = f"its Gramian differs from ours by {c['gramian']:.1e}"
          route_ok[name, route] = msg
          route_errors.setdefault((route, msg), []).append(name)
          continue
        route_ok[name, route] = None
        comps.append(c)
      worst = None
      if comps:  # the worst over the routes, each figure on its own
        worst = {f: max(c[f] for c in comps) for f in ("gramian", "err_j",
                                                       "rel")}
        ws = [c["weights"] for c in comps if c["weights"] is not None]
        worst["weights"] = max(ws) if ws else None
        worst["ok"] = all(c["ok"] for c in comps)
      torch_checks[name] = {"f64": worst, "route_ok": {
          r: route_ok.get((name, r)) for r in TORCH_ROUTES
          if route_applies(name, r)}}

    # 3. torchjd's fastest correct route per aggregator.
    select: dict[str, dict[str, tuple[float, int]]] = {}
    for name in names:
      select[name] = {}
      for route, err in torch_checks[name]["route_ok"].items():
        if err is not None:
          continue
        v = TorchVariant(problem, name, route)
        v.run(1)  # warm up (cvxpy builds its problem)
        t = min(v.run(args.select_steps) for _ in range(2)) / args.select_steps
        peak = v.peak_bytes()
        select[name][route] = (t, peak)
      if select[name]:
        chosen[name] = min(select[name], key=lambda r: select[name][r][0])
    res["torch_select"] = select
    res["torch_route"] = chosen

    # The float32 first step of the timed configuration, for information.
    if args.f32_check:
      ours32 = OurFirstStep(problem, best, jnp.float32)
      for name in names:
        if name not in chosen:
          continue
        theirs = torch_first_step(problem, name, chosen[name], torch.float32)
        torch_checks[name]["f32"] = compare(
            name, ours32(name, theirs.get("orders")), theirs, max_j)
    res["check"] = torch_checks

    print("### Correctness at the first step\n")
    print("float64, the same weights and data. `G`: max |G - G_torchjd| / "
          "max |G_torchjd|; `d`: the direction J^T w, max |d - d_torchjd| / "
          "max |J| and ||d - d_torchjd|| / ||d_torchjd||; the worst over "
          "every correct torchjd route; `level`: the torchjd parity test's "
          "criterion (tests/test_aggregators*.py); `w`: max weight difference "
          "relative to torchjd's max weight; `f32`: ||d - d_torchjd|| / "
          "||d_torchjd|| at float32 by the timed route (with --f32-check).\n")
    print("| aggregator | routes checked | G | d / max J | d rel. | w | level "
          "| verdict | f32 d rel. |")
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for name in names:
      c = torch_checks[name]["f64"]
      n_ok = sum(err is None for err in torch_checks[name]["route_ok"].values())
      if c is None:
        print(f"| {name} | 0 | - | - | - | - | {level_text(name)} | no route "
              "ran | - |")
        continue
      f32 = torch_checks[name].get("f32")
      w = "-" if c["weights"] is None else f"{c['weights']:.1e}"
      print(f"| {name} | {n_ok} | {c['gramian']:.1e} | {c['err_j']:.1e} | "
            f"{c['rel']:.1e} | {w} | {level_text(name)} | "
            f"{'**pass**' if c['ok'] else '**FAIL**'} | "
            f"{'-' if f32 is None else format(f32['rel'], '.1e')} |")
    if "pcgrad" in names:
      print("\n- pcgrad: ours as `sa.pcgrad_weights` with torchjd's own "
            "random orders (replayed from torch's generator); the rule draws "
            "its own orders from its key.")
    for (route, msg), which in sorted(route_errors.items()):
      print(f"- `{route}` did not qualify for {', '.join(which)}: {msg}")
    print("\n### torchjd routes (ms/step over "
          f"{args.select_steps} steps, best of 2; peak MiB of one step)\n")
    print("| aggregator | " + " | ".join(TORCH_ROUTES) + " |")
    print("|---|" + "---:|" * len(TORCH_ROUTES))
    for name in names:
      cells = []
      for route in TORCH_ROUTES:
        if not route_applies(name, route):
          cells.append("n/a")
        elif route in select[name]:
          t, peak = select[name][route]
          cell = f"{t * 1e3:,.1f} ({bc.mib(peak)})"
          cells.append(f"**{cell}**" if chosen.get(name) == route else cell)
        else:
          cells.append("fails")
      print(f"| {name} | " + " | ".join(cells) + " |")
    print(flush=True)

  # 4. The interleaved timing.
  timers: dict[str, Callable[[], float]] = {}
  timers["ours: plain sum"] = functools.partial(
      bc.time_call, plain, (problem.params, problem.batch))
  runs = {"upgrad": route_runs[best]}
  t0 = time.perf_counter()
  for name in names:
    if name not in runs:
      runs[name] = run_fn(problem, our_rule(name, k), best, args.steps)
    bc.time_call(runs[name], (problem.params, problem.batch))
  compile_s = time.perf_counter() - t0
  torch_variants: dict[str, TorchVariant] = {}
  if not args.no_torch:
    torch_variants["plain sum"] = TorchVariant(problem, None, "plain")
    for name in names:
      if name in chosen:
        torch_variants[name] = TorchVariant(problem, name, chosen[name])
    for v in torch_variants.values():
      v.run(2)  # warm up
    timers["torch: plain sum"] = functools.partial(
        torch_variants["plain sum"].run, args.steps)
  for name in names:
    timers[f"ours: {name}"] = functools.partial(
        bc.time_call, runs[name], (problem.params, problem.batch))
    if name in torch_variants:
      timers[f"torch: {name}"] = functools.partial(torch_variants[name].run,
                                                   args.steps)
  times = bc.interleaved(timers, args.reps)
  per_step = {n: bc.median(t) / args.steps for n, t in times.items()}
  res["times"] = per_step
  res["ratio_to_plain"] = {n: bc.paired(times[f"ours: {n}"],
                                        times["ours: plain sum"])
                           for n in names}
  res["speedup"] = {n: bc.paired(times[f"torch: {n}"], times[f"ours: {n}"])
                    for n in names if f"torch: {n}" in times}
  if "torch: plain sum" in times:
    res["speedup"]["plain sum"] = bc.paired(times["torch: plain sum"],
                                            times["ours: plain sum"])
  res["our_temp_all"] = {n: bc.memory(runs[n])["temp"] for n in names}
  if not args.no_torch:
    res["torch_peak"] = {"plain sum": torch_variants["plain sum"].peak_bytes()}
    res["torch_peak"].update({n: res["torch_select"][n][chosen[n]][1]
                              for n in names if n in chosen})

  # 5. The aggregators' own solve, on our float32 Gramian of the first step.
  gram = jnp.asarray(OurFirstStep(problem, best, jnp.float32).gramian,
                     jnp.float32)
  solve_timers = {n: solve_timer(n, k, gram, args.solve_calls) for n in names}
  solve_times = bc.interleaved(solve_timers, max(3, args.reps // 2))
  res["solve"] = {n: bc.median(t) for n, t in solve_times.items()}
  res["solve_fraction"] = {n: res["solve"][n] / per_step[f"ours: {n}"]
                           for n in names}

  print(f"### Steps per second ({args.reps} interleaved repeats of "
        f"{args.steps} steps; ours: {best} route, the nine scanned programs "
        f"compiled in {compile_s:.1f} s)\n")
  print("`ours / plain`: our step over our plain sum (median of the "
        "per-repeat ratios); `ours faster by`: torchjd's time over ours (the "
        "same); `noise`: half the interquartile range over the median (ours, "
        "torch); `solve`: the weights function alone (us per call) and its "
        "share of our step; memory: XLA temp of our scanned program, peak of "
        "torch's allocations in one step.\n")
  print("| aggregator | ours us/step | ours steps/s | ours / plain | torchjd "
        "route | torchjd us/step | torchjd steps/s | ours faster by | noise "
        "| solve us (% of step) | ours temp MiB | torch peak MiB |")
  print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
  rows = ["plain sum", *names]
  for n in rows:
    t_o = per_step[f"ours: {n}"]
    ratio = 1.0 if n == "plain sum" else res["ratio_to_plain"][n]
    key_t = f"torch: {n}"
    if key_t in per_step:
      t_t = per_step[key_t]
      route = "eager `.backward()`" if n == "plain sum" else chosen[n]
      torch_cells = (f"{route} | {bc.us(t_t)} | {1 / t_t:,.1f} | "
                     f"**{res['speedup'][n]:.2f}x** | "
                     f"{bc.spread(times[f'ours: {n}']):.1%}, "
                     f"{bc.spread(times[key_t]):.1%}")
    else:
      torch_cells = (f"- | - | - | - | {bc.spread(times[f'ours: {n}']):.1%}")
    if n == "plain sum":
      solve_cell = "-"
      temp = res["our_temp"]["plain sum"]
    else:
      solve_cell = (f"{bc.us(res['solve'][n])} "
                    f"({res['solve_fraction'][n]:.1%})")
      temp = res["our_temp_all"][n]
    peak = res.get("torch_peak", {}).get(n)
    print(f"| {n} | {bc.us(t_o)} | {1 / t_o:,.1f} | {ratio:.2f}x | "
          f"{torch_cells} | {solve_cell} | {bc.mib(temp)} | "
          f"{'-' if peak is None else bc.mib(peak)} |")
  print(flush=True)
  print(f"({kind}, K={k} done)", file=sys.stderr, flush=True)
  return res


def main(argv: list[str] | None = None) -> dict[Any, Any]:
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--ks", type=int, nargs="+", default=[3, 16])
  parser.add_argument("--problems", nargs="+", default=["shared", "split"],
                      choices=["shared", "split"])
  parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS),
                      choices=list(AGGREGATORS))
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--select-steps", type=int, default=5,
                      help="steps per timing of a torchjd route (selection)")
  parser.add_argument("--solve-calls", type=int, default=200)
  parser.add_argument("--f32-check", action="store_true",
                      help="also compare the first step at float32 (info)")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--no-torch", action="store_true",
                      help="our side only (no torch, no torchjd)")
  parser.add_argument("--single-thread", action="store_true")
  args = parser.parse_args(argv)
  if args.tiny:
    args.steps, args.reps, args.select_steps, args.solve_calls = 3, 2, 2, 5
  threads = 1 if args.single_thread else (os.cpu_count() or 1)
  packages: tuple[str, ...] = ()
  if not args.no_torch:
    import torch

    torch.set_num_threads(threads)
    packages = ("torch", "torchjd", "quadprog", "qpsolvers", "cvxpy",
                "clarabel", "ecos", "numpy")
  bc.print_header(
      "Gramian aggregators: ours against torchjd on the same model and data",
      f"steps={args.steps} reps={args.reps} select_steps={args.select_steps} "
      f"solve_calls={args.solve_calls} tiny={args.tiny} "
      f"no_torch={args.no_torch}, adam({LEARNING_RATE}), torch threads "
      f"{'-' if args.no_torch else threads}", packages)
  results: dict[Any, Any] = {}
  for kind in args.problems:
    for k in args.ks:
      results[kind, k] = bench_config(args, kind, k, threads)

  print("\n## Goals\n")
  print("| problem | K | ours faster than torchjd (min .. max over the "
        "aggregators) | aggregators at >= 3x | largest solve share of our "
        "step |")
  print("|---|---:|---|---:|---|")
  for (kind, k), r in results.items():
    sp = {n: v for n, v in r["speedup"].items() if n != "plain sum"}
    if sp:
      lo, hi = min(sp, key=sp.get), max(sp, key=sp.get)
      speed = f"{sp[lo]:.2f}x ({lo}) .. {sp[hi]:.2f}x ({hi})"
      met = f"{sum(v >= 3 for v in sp.values())} of {len(sp)}"
    else:
      speed, met = "torch not run", "-"
    worst = max(r["solve_fraction"], key=r["solve_fraction"].get)
    goal = "" if k != 16 else (" (goal < 5%: " + (
        "met" if r["solve_fraction"][worst] < 0.05 else "missed") + ")")
    print(f"| {kind} | {k} | {speed} | {met} | "
          f"{r['solve_fraction'][worst]:.1%} ({worst}){goal} |")
  bc.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
