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
- ``ours``: the rule ``sa.softadapt(K, beta=0.1, variant="loss_weighted")``
  through ``sa.weighted_value_and_grad`` + ``sa.track_weights`` +
  ``optax.adam`` in a jitted ``lax.scan``.

Time per step: chunks of ``--chunk`` steps (torch) and one scanned call of
``--chunk`` steps (ours), run interleaved (``--reps`` rounds, the order
flipped every other round), medians. Both sides use the same number of CPU
threads (torch.set_num_threads; XLA's default pool, or 1 with
``--single-thread``). The weights of the first steps are compared between
the reference loop and ours as a check that the runs are alike.

Run (torch and the reference on its torch backend live in the benchmark
environment)::

  cd /work/main && .venv-bench/bin/python benchmarks/bench_torch.py
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


def torch_setup(problem: C.Problem, threads: int):
  import torch

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  interior, boundary = (np.asarray(a) for a in problem.fixed)
  n_res, per = interior.shape[:2]
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
  x_in = torch.from_numpy(interior.reshape(-1, 2).copy())
  x_b = torch.from_numpy(boundary.copy())
  src = torch.from_numpy(
      np.array(C.poisson_source(jnp.asarray(interior.reshape(-1, 2)))))

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
  ``vmap``, ``jacfwd(jacrev)``, ``torch.func.grad``): returns a note on
  whether ``torch.compile`` takes it and how fast it is, or why not.
  """
  torch, net, _ = torch_setup(problem, threads)
  from torch.func import functional_call, grad, jacfwd, jacrev, vmap

  interior, boundary = (np.asarray(a) for a in problem.fixed)
  n_res, per = interior.shape[:2]
  x_in = torch.from_numpy(interior.reshape(-1, 2).copy())
  x_b = torch.from_numpy(boundary.copy())
  src = torch.from_numpy(
      np.array(C.poisson_source(jnp.asarray(interior.reshape(-1, 2)))))
  params = {k: v.detach() for k, v in net.named_parameters()}

  def u1(p, x):
    return functional_call(net, p, (x[None],))[0, 0]

  def lap(p, x):
    h = jacfwd(jacrev(u1, argnums=1), argnums=1)(p, x)
    return h[0, 0] + h[1, 1]

  def total(p, w):
    res = vmap(lap, in_dims=(None, 0))(p, x_in) + src
    residual = (res**2).reshape(n_res, per).mean(dim=1)
    ub = vmap(u1, in_dims=(None, 0))(p, x_b)
    losses = torch.cat([residual, (ub**2).mean()[None]])
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
    msg = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (f"torch.func gradient step: eager {eager * 1e3:.1f} ms per call; "
            f"torch.compile failed: `{type(e).__name__}: "
            + " ".join(msg[:2])[:300].replace("`", "'") + "`")


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints its report; returns the measured numbers."""
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--ks", type=int, nargs="+", default=[2, 4])
  parser.add_argument("--chunk", type=int, default=50)
  parser.add_argument("--reps", type=int, default=6)
  parser.add_argument("--check-steps", type=int, default=20)
  parser.add_argument("--single-thread", action="store_true")
  parser.add_argument("--no-compile", action="store_true",
                      help="skip torch.compile")
  parser.add_argument("--tiny", action="store_true")
  args = parser.parse_args(argv)
  if args.tiny:
    args.chunk, args.reps, args.check_steps = 3, 2, 3
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

  def make_problem(k):
    if args.tiny:
      return C.make_pinn_problem(k, n_interior=8 * (k - 1), n_boundary=8,
                                 width=8, depth=1)
    return C.make_pinn_problem(k)

  rows, notes, results = [], [], {}
  for k in args.ks:
    problem = make_problem(k)
    # Same start: the weights of the reference loop and ours agree.
    check = TorchLoop(problem, "oracle", threads, oracle)
    check.run(args.check_steps)
    run_w, carry_w = our_loop(problem, args.check_steps)
    ours_w = np.asarray(run_w(carry_w)[1])
    w_diff = float(np.max(np.abs(ours_w - np.stack(check.used))))

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
        msg = str(e).strip().splitlines()
        first = (msg[0] if msg else "").replace("`", "'")
        notes.append(f"K={k}: torch.compile failed: "
                     f"`{type(e).__name__}: {first}`")
      notes.append(f"K={k}: " + try_func_compile(problem, threads))
    for loop in loops.values():
      loop.run(3)
    ours, carry0 = our_loop(problem, args.chunk)
    C.time_call(ours, (carry0,))
    timers: dict[str, Callable[[], float]] = {"ours (JAX, scanned)":
              lambda ours=ours, carry0=carry0:
              C.time_call(ours, (carry0,)) / args.chunk}
    timers.update({n: (lambda loop=loop: loop.run(args.chunk))
                   for n, loop in loops.items()})
    times = C.interleaved(timers, args.reps)
    t_ours = times["ours (JAX, scanned)"]
    for name, t in times.items():
      speed = C.paired(t, t_ours)
      results[k, name] = {"step": C.median(t), "speedup": speed}
      rows.append(f"| {k} | {name} | {C.us(C.median(t))} | "
                  f"{1 / C.median(t):,.0f} | {speed:.2f}x | "
                  f"{C.spread(t) * 100:.1f}% | "
                  + (f"{w_diff:.1e}" if name == "torch eager + reference"
                     else "") + " |")
    # Training sanity: the loops moved the same way.
    for name, loop in loops.items():
      err = float(C.pinn_rel_l2(loop.params_jax()))
      results[k, name]["rel_l2"] = err
    print(f"(K={k} done)", file=sys.stderr, flush=True)

  print("Time per training step, microseconds (median over the rounds), "
        "steps per second, and ours' speedup = torch / ours (median of the "
        "per-round ratios). `w diff`: max |weights| difference between the "
        f"reference loop and ours over the first {args.check_steps} steps "
        "from the same start.\n")
  print("| K | variant | us/step | steps/s | ours faster by | noise | w diff |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(r)
  print()
  for n in notes:
    print(f"- {n}")
  print(f"- torch threads {torch.get_num_threads()}, interop "
        f"{torch.get_num_interop_threads()}")
  C.print_footer()
  return results


if __name__ == "__main__":
  main()
  sys.exit(0)
