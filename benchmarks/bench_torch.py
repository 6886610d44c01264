"""Benchmark: the same PINN in PyTorch with per-step SoftAdapt, versus ours.

The 2D Poisson PINN of ``bench_step.py`` (tanh 2 -> 64 -> 64 -> 64 -> 1,
512 interior points in ``K - 1`` strips + 128 boundary points, full batch,
``optax.adam`` / ``torch.optim.Adam`` at 1e-3, the same initial weights and
points in both) trained with loss-weighted SoftAdapt (beta 0.1, order 1)
recomputed every step:

- ``torch eager + reference``: what the reference package's README shows,
  run on PyTorch: every step the loss components' last ``order + 1`` values
  are passed to ``softadapt.LossWeightedSoftAdapt.get_component_weights``
  (Keras 3 on its torch backend), then ``(w * losses).sum().backward()`` and
  an Adam step. The Laplacian is the usual PyTorch PINN code: nested
  ``torch.autograd.grad(..., create_graph=True)``.
- ``torch eager + inline``: the same step with the weights computed by a few
  torch ops in the step (no package call): the fastest eager PyTorch loop.
- ``torch.compile``: the inline step under ``torch.compile`` (default mode,
  inductor), if it compiles on this machine; otherwise the error is printed.
  It differentiates through ``torch.autograd.grad(create_graph=True)``,
  which torch.compile (AOTAutograd) refuses: double backward.
- ``torch.compile(torch.func loss) + eager .backward()``: the loss vector
  written with ``torch.func`` (``functional_call``, ``vmap``, the Laplacian
  from ``jacrev(jacrev)`` in the input) and compiled alone; the weights are
  computed inline, ``(w * losses).sum().backward()`` runs the compiled
  backward from the eager autograd engine, then the Adam step. Its losses and
  gradient at the first step are checked against the eager row's.
- ``ours``: the rule ``sa.softadapt(K, beta=0.1, variant="loss_weighted")``
  through ``sa.weighted_value_and_grad`` + ``sa.track_weights`` +
  ``optax.adam`` in a jitted ``lax.scan``.

Time per step: chunks of ``--chunk`` steps (torch) and one scanned call of
``--chunk`` steps (ours), run interleaved (``--reps`` rounds, the order
flipped every other round), medians. Both sides use the same number of CPU
threads (torch.set_num_threads; XLA's default pool, or 1 with
``--single-thread``). The weights of the first steps are compared between
the reference loop and ours as a check that the runs are alike.

``--widths [W ...]`` (default 16 32 64 128 when given without values) adds
a table: eager PyTorch (the inline loop) against ours at each hidden width,
same depth, points and K (``--width-k``), so the ratio can be read against
the size of the model.

Run (torch and the reference on its torch backend live in the benchmark
environment)::

  cd /work/main && .venv-bench/bin/python benchmarks/bench_torch.py \
      --single-thread --widths
"""

from __future__ import annotations

import os
import sys

# The reference package runs on Keras 3; here on its torch backend.
os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import argparse
import time
from collections.abc import Callable
from typing import Any

import _bench_common as C  # first: handles --single-thread
import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

BETA = 0.1
ORDER = 1
EPSILON = 1e-8
LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------
# PyTorch side.


def torch_points(problem: C.Problem):
  """The PINN's points as torch tensors: interior, boundary, source, strips."""
  import torch

  interior, boundary = (np.asarray(a) for a in problem.fixed)
  n_res, per = interior.shape[:2]
  x_in = torch.from_numpy(interior.reshape(-1, 2).copy())
  x_b = torch.from_numpy(boundary.copy())
  src = torch.from_numpy(
      np.array(C.poisson_source(jnp.asarray(interior.reshape(-1, 2)))))
  return x_in, x_b, src, n_res, per


def torch_setup(problem: C.Problem, threads: int):
  import torch

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  layers = []
  for i, layer in enumerate(problem.params):
    lin = torch.nn.Linear(*np.asarray(layer["w"]).shape)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(np.asarray(layer["w"]).T.copy()))
      lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"]).copy()))
    layers.append(lin)
    if i < len(problem.params) - 1:
      layers.append(torch.nn.Tanh())
  net = torch.nn.Sequential(*layers)
  x_in, x_b, src, n_res, per = torch_points(problem)

  def losses_fn(net):
    x = x_in.clone().requires_grad_(True)
    u = net(x)[:, 0]
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
    (gy,) = torch.autograd.grad(g[:, 1].sum(), x, create_graph=True)
    res = gx[:, 0] + gy[:, 1] + src
    residual = (res**2).reshape(n_res, per).mean(dim=1)
    ub = net(x_b)[:, 0]
    return torch.cat([residual, (ub**2).mean()[None]])

  return torch, net, losses_fn


def func_losses(problem: C.Problem, net, hessian: str = "jacrev(jacrev)"):
  """The loss vector as a function of the parameters, with ``torch.func``.

  ``p -> [K]`` for ``p = dict(net.named_parameters())``: ``functional_call``
  per point under ``vmap``, the Laplacian from the Hessian in the input,
  ``jacrev(jacrev)`` (reverse over reverse) or ``jacfwd(jacrev)`` (what
  ``torch.func.hessian`` does).
  """
  import torch
  from torch.func import functional_call, jacfwd, jacrev, vmap

  x_in, x_b, src, n_res, per = torch_points(problem)
  outer = {"jacrev(jacrev)": jacrev, "jacfwd(jacrev)": jacfwd}[hessian]

  def u1(p, x):
    return functional_call(net, p, (x[None],))[0, 0]

  def lap(p, x):
    h = outer(jacrev(u1, argnums=1), argnums=1)(p, x)
    return h[0, 0] + h[1, 1]

  def losses(p):
    res = vmap(lap, in_dims=(None, 0))(p, x_in) + src
    residual = (res**2).reshape(n_res, per).mean(dim=1)
    ub = vmap(u1, in_dims=(None, 0))(p, x_b)
    return torch.cat([residual, (ub**2).mean()[None]])

  return losses


def first_error(e: Exception, lines: int = 1) -> str:
  msg = [ln for ln in str(e).strip().splitlines() if ln.strip()]
  return (f"{type(e).__name__}: "
          + " ".join(msg[:lines])[:300].replace("`", "'"))


def inline_weights(torch, history):
  """Loss-weighted SoftAdapt, order 1, from a ``[2, K]`` history tensor."""
  slopes = history[1] - history[0]
  mean = history.mean(dim=0)
  z = BETA * slopes
  e = mean * torch.exp(z - z.max())
  return e / (e.sum() + EPSILON)


class TorchLoop:
  """A PyTorch training loop, resumable in timed chunks."""

  def __init__(self, problem: C.Problem, mode: str, threads: int, oracle=None):
    torch, net, losses_fn = torch_setup(problem, threads)
    self.torch, self.net, self.mode = torch, net, mode
    self.eager_losses_fn = losses_fn
    if mode == "compile_loss":  # the loss alone compiled; backward eager
      compiled = torch.compile(func_losses(problem, net))
      params = dict(net.named_parameters())  # updated in place by Adam

      def losses_fn(net):
        return compiled(params)
    self.k = problem.num_losses
    self.opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    self.history: list[Any] = []
    self.used: list[np.ndarray] = []
    self.uniform = torch.full((self.k,), 1.0 / self.k)

    def step_inline(hist_prev):
      losses = losses_fn(net)
      hist = torch.stack([hist_prev, losses.detach()])
      w = inline_weights(torch, hist)
      self.opt.zero_grad(set_to_none=True)
      (w * losses).sum().backward()
      self.opt.step()
      return losses.detach(), w

    self.losses_fn, self.oracle = losses_fn, oracle
    self.step_inline = step_inline
    if mode == "compile":
      self.step_inline = torch.compile(step_inline)

  def step(self) -> None:
    torch = self.torch
    if self.mode == "oracle":  # the README's way: the package, every step
      losses = self.losses_fn(self.net)
      self.history.append(losses.detach())
      del self.history[: -(ORDER + 1)]
      if len(self.history) < ORDER + 1:
        w = self.uniform
      else:
        cols = [torch.stack([h[j] for h in self.history]) for j in range(self.k)]
        assert self.oracle is not None  # the "oracle" mode has one
        w = self.oracle.get_component_weights(*cols, verbose=False)
      self.opt.zero_grad(set_to_none=True)
      (w * losses).sum().backward()
      self.opt.step()
    elif not self.history:  # warm-up step of the inline loops: 1/K weights
      losses = self.losses_fn(self.net)
      w = self.uniform
      self.opt.zero_grad(set_to_none=True)
      (w * losses).sum().backward()
      self.opt.step()
      self.history = [losses.detach()]
    else:
      losses, w = self.step_inline(self.history[-1])
      self.history = [losses]
    self.used.append(np.asarray(w.detach()))

  def first_step_check(self) -> tuple[float, float, float]:
    """This loop's losses and gradient against the eager autograd version's.

    At the current parameters (before any step: the shared start), with the
    warm-up weights 1/K. Returns the max relative differences of the losses
    and of the gradient, and the seconds the first call took (for the
    compiled loss: tracing and compiling).
    """
    torch = self.torch
    params = list(self.net.parameters())
    t0 = time.perf_counter()
    mine = self.losses_fn(self.net)
    g_mine = torch.autograd.grad((self.uniform * mine).sum(), params)
    first = time.perf_counter() - t0
    ref = self.eager_losses_fn(self.net)
    g_ref = torch.autograd.grad((self.uniform * ref).sum(), params)
    mine, ref = mine.detach(), ref.detach()
    loss_rel = float((mine - ref).abs().max() / ref.abs().max())
    grad_rel = max(float((a - b).abs().max()) for a, b in zip(g_mine, g_ref,
                                                              strict=True))
    grad_rel /= max(float(b.abs().max()) for b in g_ref)
    return loss_rel, grad_rel, first

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return (time.perf_counter() - t0) / steps

  def params_jax(self) -> list[dict[str, jax.Array]]:
    lins = [m for m in self.net if isinstance(m, self.torch.nn.Linear)]
    return [{"w": jnp.asarray(m.weight.detach().numpy().T),
             "b": jnp.asarray(m.bias.detach().numpy())} for m in lins]


def try_func_compile(problem: C.Problem, threads: int) -> str:
  """``torch.compile`` of a ``torch.func`` version of the gradient step.

  The other way to write the Laplacian in PyTorch (``functional_call``,
  ``vmap``, ``jacfwd(jacrev)``, ``torch.func.grad`` of the weighted sum):
  the whole gradient, second derivatives included, in the compiled function.
  Returns a note on whether ``torch.compile`` takes it and how fast it is,
  or why not.
  """
  torch, net, _ = torch_setup(problem, threads)
  from torch.func import grad

  losses_of = func_losses(problem, net, "jacfwd(jacrev)")
  params = {k: v.detach() for k, v in net.named_parameters()}

  def total(p, w):
    losses = losses_of(p)
    return (w * losses).sum(), losses

  step = grad(total, has_aux=True)
  w = torch.full((problem.num_losses,), 1.0 / problem.num_losses)
  step(params, w)  # warm up
  t0 = time.perf_counter()
  for _ in range(3):
    step(params, w)
  eager = (time.perf_counter() - t0) / 3
  try:
    compiled = torch.compile(step)
    t0 = time.perf_counter()
    compiled(params, w)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
      compiled(params, w)
    per_call = (time.perf_counter() - t0) / 3
    return (f"torch.func gradient step: eager {eager * 1e3:.1f} "
            f"ms, torch.compile {per_call * 1e3:.1f} ms per call (first call "
            f"{first:.1f} s)")
  except Exception as e:  # reported
    return (f"torch.func gradient step: eager {eager * 1e3:.1f} ms per call; "
            f"torch.compile failed: `{first_error(e, 2)}`")


def try_forward_mode_loss(problem: C.Problem, threads: int) -> str:
  """The compiled-loss row's form with ``jacfwd(jacrev)`` for the Hessian.

  ``torch.func.hessian``'s form (forward over reverse): returns whether the
  compiled loss and its eager ``.backward()`` run, or the error.
  """
  torch, net, _ = torch_setup(problem, threads)
  compiled = torch.compile(func_losses(problem, net, "jacfwd(jacrev)"))
  w = torch.full((problem.num_losses,), 1.0 / problem.num_losses)
  stage = "the compiled forward"
  try:
    losses = compiled(dict(net.named_parameters()))
    stage = "the eager .backward() through the compiled loss"
    (w * losses).sum().backward()
  except Exception as e:  # reported
    return (f"torch.compile(torch.func loss) with jacfwd(jacrev) (the form "
            f"of torch.func.hessian) instead of jacrev(jacrev): {stage} "
            f"failed: `{first_error(e)}`")
  return ("torch.compile(torch.func loss) with jacfwd(jacrev) (the form of "
          "torch.func.hessian) instead of jacrev(jacrev): runs too")


# --------------------------------------------------------------------------
# Ours.


def our_loop(problem: C.Problem, steps: int):
  rule = sa.softadapt(problem.num_losses, order=ORDER, beta=BETA,
                      variant="loss_weighted", epsilon=EPSILON)
  tx = optax.chain(sa.track_weights(rule), optax.adam(LEARNING_RATE))
  grad_fn = sa.weighted_value_and_grad(problem.loss_vec_fn, rule)

  def step(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params, problem.fixed)
    updates, opt_state = tx.update(out.grad, opt_state, params,
                                   weighting_state=out.state)
    return (optax.apply_updates(params, updates), opt_state), out.weights

  def run(carry):
    return jax.lax.scan(step, carry, None, length=steps)

  carry0 = (problem.params, tx.init(problem.params))
  return jax.jit(run).lower(carry0).compile(), carry0


COMPILED_LOSS = "torch.compile(torch.func loss) + eager .backward()"
DEFAULT_WIDTHS = (16, 32, 64, 128)


def weights_check(problem: C.Problem, mode: str, threads: int, steps: int,
                  oracle=None) -> float:
  """Max |weights| difference between a torch loop and ours, same start."""
  check = TorchLoop(problem, mode, threads, oracle)
  check.run(steps)
  run_w, carry_w = our_loop(problem, steps)
  ours_w = np.asarray(run_w(carry_w)[1])
  return float(np.max(np.abs(ours_w - np.stack(check.used))))


def ours_timer(problem: C.Problem, chunk: int) -> Callable[[], float]:
  ours, carry0 = our_loop(problem, chunk)
  C.time_call(ours, (carry0,))  # warm up
  return lambda: C.time_call(ours, (carry0,)) / chunk


def width_rows(args, threads: int, make_problem) -> tuple[list[str], dict]:
  """Eager PyTorch (inline weights) against ours at each hidden width."""
  rows, results = [], {}
  k = args.width_k
  for width in args.widths:
    problem = make_problem(k, width)
    w_diff = weights_check(problem, "inline", threads, args.check_steps)
    eager = TorchLoop(problem, "inline", threads)
    eager.run(3)
    times = C.interleaved({"ours": ours_timer(problem, args.chunk),
                           "torch": lambda eager=eager: eager.run(args.chunk)},
                          args.reps)
    t_ours, t_torch = C.median(times["ours"]), C.median(times["torch"])
    speed = C.paired(times["torch"], times["ours"])
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(problem.params))
    results[width] = {"ours": t_ours, "torch": t_torch, "speedup": speed,
                      "w_diff": w_diff, "params": n_params}
    rows.append(
        f"| {width} | {n_params:,} | {C.us(t_ours)} | {1 / t_ours:,.0f} | "
        f"{C.us(t_torch)} | {1 / t_torch:,.0f} | {speed:.2f}x | "
        f"{C.spread(times['ours']) * 100:.1f}%, "
        f"{C.spread(times['torch']) * 100:.1f}% | {w_diff:.1e} |")
    print(f"(width {width} done)", file=sys.stderr, flush=True)
  return rows, results


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--ks", type=int, nargs="*", default=[2, 4],
                      help="K of the main table (none: widths table only)")
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--reps", type=int, default=6)
  parser.add_argument("--check-steps", type=int, default=20)
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--no-compile", action="store_true",
                      help="skip torch.compile")
  parser.add_argument(
      "--widths", type=int, nargs="*", default=None,
      help="add eager PyTorch against ours at these hidden widths (given "
           "alone: " + " ".join(map(str, DEFAULT_WIDTHS)) + ")")
  parser.add_argument("--width-k", type=int, default=2,
                      help="K of the widths table")
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args(argv)
  if args.tiny:
    args.chunk, args.reps, args.check_steps = 3, 2, 3
  if args.widths == []:
    args.widths = list(DEFAULT_WIDTHS)
  threads = 1 if args.single_thread else (os.cpu_count() or 1)
  import keras
  import softadapt
  import torch

  oracle = softadapt.LossWeightedSoftAdapt(beta=BETA, accuracy_order=ORDER)
  oracle.epsilon = EPSILON
  C.print_header(
      "PyTorch with per-step SoftAdapt versus ours",
      f"loss-weighted SoftAdapt beta={BETA} order={ORDER}, adam("
      f"{LEARNING_RATE}), {args.chunk} steps per timed chunk, {args.reps} "
      f"interleaved rounds, torch threads {threads}, keras backend "
      f"{keras.backend.backend()}" + (", tiny PINN" if args.tiny else ""),
      packages=("torch", "keras", "softadapt"))

  def make_problem(k, width=64):
    if args.tiny:
      return C.make_pinn_problem(k, n_interior=8 * (k - 1), n_boundary=8,
                                 width=width // 8, depth=1)
    return C.make_pinn_problem(k, width=width)

  rows, notes, results = [], [], {}
  for k in args.ks:
    problem = make_problem(k)
    # Same start: the weights of the reference loop and ours agree.
    w_diff = weights_check(problem, "oracle", threads, args.check_steps,
                           oracle)
    checks = {"torch eager + reference": f"w {w_diff:.1e}"}

    loops = {"torch eager + reference": TorchLoop(problem, "oracle", threads,
                                                  oracle),
             "torch eager + inline": TorchLoop(problem, "inline", threads)}
    if not args.no_compile:
      try:
        loop = TorchLoop(problem, "compile", threads)
        t0 = time.perf_counter()
        loop.run(3)  # compiles
        notes.append(f"K={k}: torch.compile compiled and warmed up in "
                     f"{time.perf_counter() - t0:.1f} s")
        loops["torch.compile + inline"] = loop
      except Exception as e:  # reported
        notes.append(f"K={k}: torch.compile of the inline step (autograd "
                     f"double backward) failed: `{first_error(e)}`")
      notes.append(f"K={k}: " + try_func_compile(problem, threads))
      try:
        loop = TorchLoop(problem, "compile_loss", threads)
        loss_rel, grad_rel, first = loop.first_step_check()
        t0 = time.perf_counter()
        loop.run(3)  # the first steps; no recompilation expected
        ok = loss_rel < 1e-4 and grad_rel < 1e-4
        checks[COMPILED_LOSS] = (f"loss {loss_rel:.1e}, grad {grad_rel:.1e}"
                                 + ("" if ok else " MISMATCH"))
        notes.append(
            f"K={k}: {COMPILED_LOSS}: first call (compiles forward and "
            f"backward) {first:.1f} s, then 3 steps in "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms; at the first step its losses "
            f"and gradient equal the eager autograd loop's to {loss_rel:.1e} "
            f"and {grad_rel:.1e} (max relative difference)"
            + ("" if ok else ": MISMATCH"))
        loops[COMPILED_LOSS] = loop
        results[k, "compiled_loss_check"] = {"loss": loss_rel,
                                             "grad": grad_rel}
      except Exception as e:  # reported
        notes.append(f"K={k}: {COMPILED_LOSS} failed: `{first_error(e)}`")
      if k == args.ks[0]:
        notes.append(f"K={k}: " + try_forward_mode_loss(problem, threads))
    for loop in loops.values():
      loop.run(3)
    timers: dict[str, Callable[[], float]] = {
        "ours (JAX, scanned)": ours_timer(problem, args.chunk)}
    timers.update({n: (lambda loop=loop: loop.run(args.chunk))
                   for n, loop in loops.items()})
    times = C.interleaved(timers, args.reps)
    t_ours = times["ours (JAX, scanned)"]
    for name, t in times.items():
      speed = C.paired(t, t_ours)
      results[k, name] = {"step": C.median(t), "speedup": speed}
      rows.append(f"| {k} | {name} | {C.us(C.median(t))} | "
                  f"{1 / C.median(t):,.0f} | {speed:.2f}x | "
                  f"{C.spread(t) * 100:.1f}% | {checks.get(name, '')} |")
    # Training sanity: the loops moved the same way.
    for name, loop in loops.items():
      err = float(C.pinn_rel_l2(loop.params_jax()))
      results[k, name]["rel_l2"] = err
    print(f"(K={k} done)", file=sys.stderr, flush=True)

  if args.ks:
    print("Time per training step, microseconds (median over the rounds), "
          "steps per second, and ours' speedup = torch / ours (median of the "
          "per-round ratios). `check`: `w`, max |weights| difference between "
          f"the reference loop and ours over the first {args.check_steps} "
          "steps from the same start; `loss`, `grad`: max relative "
          "difference of the compiled loss's losses and gradient from the "
          "eager autograd loop's at the first step.\n")
    print("| K | variant | us/step | steps/s | ours faster by | noise | check |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
      print(r)
    print()
    for n in notes:
      print(f"- {n}")
    print(f"- torch threads {torch.get_num_threads()}, interop "
          f"{torch.get_num_interop_threads()}")

  if args.widths:
    w_rows, results["widths"] = width_rows(args, threads, make_problem)
    p = make_problem(args.width_k)
    n_in = int(np.prod(p.fixed[0].shape[:2]))
    n_b = int(p.fixed[1].shape[0])
    depth = len(p.params) - 1
    print(f"\n## Eager PyTorch against ours by model width (K={args.width_k})"
          f"\n\nThe same PINN, {depth} tanh hidden layers of the given width, "
          f"{n_in} interior + {n_b} boundary points, K={args.width_k}; the "
          "torch loop is `torch eager + inline` (the fastest eager loop). "
          "Microseconds per step and steps per second (medians), ours faster "
          "by = torch / ours (median of the per-round ratios), noise (ours, "
          "torch), `w diff`: max |weights| difference between the torch loop "
          f"and ours over the first {args.check_steps} steps.\n")
    print("| width | params | ours us/step | ours steps/s | torch us/step | "
          "torch steps/s | ours faster by | noise | w diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in w_rows:
      print(r)
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
