"""The problems of the multi-task study: the digits with three heads, and the
two-objective toy of the CAGrad, Nash-MTL and FAMO papers.

**Digits** (scikit-learn's bundled ``load_digits``, 1797 8x8 images scaled
to ``[0, 1]``; a fixed stratified 80/20 split, 1437 train / 360 test): a
shared ReLU trunk ``64 -> 128 -> 32`` and three heads on its 32-dimensional
code, three terms of very different scales:

- ``class``: 10-class cross-entropy (``log 10 = 2.3`` at the start), test
  metric: accuracy;
- ``recon``: the 64 pixels from the code (a ``32 -> 128 -> 64`` decoder), the
  mean squared error per pixel (about 0.2 at the start), test metric: MSE;
- ``ink``: an auxiliary regression of the digit's total ink (the sum of its
  64 intensities, mean 19.5, std 2.2), squared error (about 400 at the
  start), test metric: MSE.

Adam, cosine-decayed from ``1e-3`` to 0 over the run, batches of 128 drawn
without replacement (an epoch is 11 batches, the last 29 images of each
permutation left out). The seed fixes the initialisation and every batch
(NumPy generators), so every method sees the same ones.

**The toy** (Liu et al., *Conflict-Averse Gradient Descent*, NeurIPS 2021,
``toy.py`` of Cranial-XIX/CAGrad; scaled as in Navon et al., *Nash-MTL*, ICML
2022, ``experiments/toy/problem.py`` of AvivNavon/nash-mtl, and Liu et al.,
*FAMO*, NeurIPS 2023, ``experiments/toy/`` of Cranial-XIX/FAMO): for
``x = (x1, x2)``, with ``clamp(a, lo) = max(a, lo)``,

.. code-block:: text

  l1 = log(clamp(|0.5 (-x1 - 7) - tanh(-x2)|, 5e-6)) + 6
  l2 = log(clamp(|0.5 (-x1 + 3) + tanh(-x2) + 2|, 5e-6)) + 6
  q1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
  q2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
  c1 = clamp(tanh(x2 / 2), 0),   c2 = clamp(tanh(-x2 / 2), 0)
  f1 = 0.1 (l1 c1 + q1 c2),      f2 = l2 c1 + q2 c2

(the factor 0.1 on ``f1`` is Nash-MTL's and FAMO's ``scale``; CAGrad has
none). Starting points ``(-8.5, 7.5)``, ``(0, 0)``, ``(9, 9)``, ``(-7.5,
-0.5)``, ``(9, -1)`` (Nash-MTL and FAMO; CAGrad used the first and third and
``(-8.5, -5)``); Adam, learning rate ``1e-3``, full (deterministic)
gradients; 50,000 steps as in FAMO (Nash-MTL: 35,000, CAGrad: 100,000, with
no scale). The objectives go negative (to about -2 and -20), which the
loss-value rules cannot take (logarithms, ratios): every rule is given
``f - m`` with ``m = (-2.1, -21)``, FAMO's ``min_losses`` for this problem
(``[-21 * scale, -21]``), which changes no gradient. The point is stored as a
``1 x 2`` matrix so that the learning-rate-annealing conventions that look at
weight matrices only see it. Not reproduced: the per-method gradient-norm
clipping (``max_norm = 1``) of the FAMO and Nash-MTL code, since every method
here steps through the same optimizer.

**The Pareto set of the toy, in closed form up to a 1D root.** Where ``x2 >=
0``, ``c2 = 0`` and both objectives (unscaled) exceed ``log(5e-6) + 6 =
-6.21``. Where ``x2 < 0``, ``c1 = 0`` and ``f_k = t q_k`` with ``t =
tanh(-x2/2) > 0``. For weights ``w = ((x1* + 7) / 14, (7 - x1*) / 14)``,
``x1*`` in ``[-7, 7]``, the weighted sum is ``t (g(x1) + 0.01 (x2 + 8)^2 -
20)`` with ``g = w1 (x1 - 7)^2 / 10 + w2 (x1 + 7)^2 / 10`` a convex quadratic
minimised at ``x1 = x1*`` with ``g(x1*) = (49 - x1*^2) / 10``; so its global
minimum over ``x2 < 0`` is at ``(x1*, x2*)`` where ``x2*`` minimises ``h(x2) =
(A + 0.01 (x2 + 8)^2) tanh(-x2 / 2)``, ``A = (49 - x1*^2)/10 - 20`` (a
unique minimum between ``-8.44`` and ``-8.35``, found by bisection on ``h'``;
at ``x1* = 0`` it is the ``y = -8.3552`` of the papers' horizontal line). A
minimiser of a sum with positive weights is Pareto optimal, and the
first-order condition (the ``x1`` component of ``w1 grad f1 + w2 grad f2 =
0`` fixes ``w`` as above) leaves no other candidate where ``x2 < 0``; the
point of this curve at ``x1 = -4.7`` (unscaled ``f = (-6.3, -19.5)``)
dominates the whole half-plane ``x2 >= 0``. So the curve ``{(x1*,
x2*(x1*))}`` is the Pareto set (the tests check it against a dense grid).

**Reaching the front.** The test is in objective space, on the unscaled
objectives ``F = (f1 / 0.1, f2)`` (both in the same units, ranges of about
20): the *Pareto gap* of a point is ``max(0, max_c min_k (F_k(x) -
F_k(c)))`` over the points ``c`` of the curve (2,801 of them), the amount by
which some Pareto-optimal point improves both objectives at once. A final
point **reaches the front** when its gap is at most ``TOY_TOLERANCE = 0.01``
(0.05 % of the range). A distance in ``x`` would be stricter than it means:
near the ends of the front the objectives hardly change along ``x2`` (a point
0.13 off the curve is within ``3e-4`` of it in ``F``). The distance in ``x``
and the Pareto stationarity ``min_w |w1 grad f1 + w2 grad f2|`` are recorded
too.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa
from examples.studies import _digits

# ---------------------------------------------------------------------------
# Digits: a shared trunk, three heads.
# ---------------------------------------------------------------------------

DIGITS_NAMES = ("class", "recon", "ink")
DIGITS_BATCH = 128
TRUNK = (64, 128, 32)
SHARED = "['trunk']"  # the path prefix of the shared parameters
LAST_SHARED = "['trunk'][1]['w']"  # the last shared layer's weight matrix


class Digits(NamedTuple):
  """The data of the digits problem (train and test) and its trivial scores."""

  x_train: jax.Array
  y_train: jax.Array
  ink_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  ink_test: jax.Array
  trivial: dict[str, float]


def digits() -> Digits:
  """The fixed split, and the test scores of the trivial predictors.

  The trivial predictors (the failure thresholds of the study): accuracy 0.5
  (chance is 0.1), the train mean image for ``recon``, the train mean ink for
  ``ink``.
  """
  data = _digits.load(test_size=0.2, seed=0)
  x_tr, x_te = data["x_train"], data["x_test"]
  ink_tr, ink_te = x_tr.sum(axis=1), x_te.sum(axis=1)
  trivial = {
      "accuracy": 0.5,
      "recon_mse": float(np.mean((x_te - x_tr.mean(axis=0)) ** 2)),
      "ink_mse": float(np.mean((ink_te - ink_tr.mean()) ** 2)),
  }
  return Digits(
      jnp.asarray(x_tr), jnp.asarray(data["y_train"]), jnp.asarray(ink_tr),
      jnp.asarray(x_te), jnp.asarray(data["y_test"]), jnp.asarray(ink_te),
      trivial,
  )


def init_digits(seed: int) -> dict[str, Any]:
  """Glorot-normal weights, zero biases: the trunk and the three heads.

  Drawn with NumPy (``default_rng([seed, 0])``): the same for every method,
  and no threefry program to compile.
  """
  rng = np.random.default_rng([seed, 0])

  def mlp(sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    return [
        {"w": jnp.asarray(math.sqrt(2.0 / (a + b)) * rng.standard_normal((a, b)),
                          jnp.float32),
         "b": jnp.zeros((b,), jnp.float32)}
        for a, b in itertools.pairwise(sizes)
    ]

  code = TRUNK[-1]
  return {
      "trunk": mlp(TRUNK),
      "class": mlp((code, 10)),
      "recon": mlp((code, 128, 64)),
      "ink": mlp((code, 1)),
  }


def digits_forward(params: dict[str, Any], x: jax.Array):
  """The code (ReLU after every trunk layer), logits, pixels, ink."""
  code = jax.nn.relu(_digits.mlp(params["trunk"], x))
  return (
      _digits.mlp(params["class"], code),
      _digits.mlp(params["recon"], code),
      _digits.mlp(params["ink"], code)[:, 0],
  )


def digits_losses(params: dict[str, Any], x: jax.Array, y: jax.Array,
                  ink: jax.Array) -> dict[str, jax.Array]:
  logits, pixels, ink_hat = digits_forward(params, x)
  return {
      "class": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)),
      "recon": jnp.mean((pixels - x) ** 2),
      "ink": jnp.mean((ink_hat - ink) ** 2),
  }


def digits_metrics(params: dict[str, Any], data: Digits) -> dict[str, jax.Array]:
  """Test accuracy, reconstruction MSE (per pixel) and ink MSE."""
  logits, pixels, ink_hat = digits_forward(params, data.x_test)
  return {
      "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == data.y_test),
      "recon_mse": jnp.mean((pixels - data.x_test) ** 2),
      "ink_mse": jnp.mean((ink_hat - data.ink_test) ** 2),
  }


def digits_failed(metrics: dict[str, float], trivial: dict[str, float]) -> bool:
  """A collapsed task: a metric not finite or no better than its trivial score."""
  if not all(math.isfinite(v) for v in metrics.values()):
    return True
  return bool(
      metrics["accuracy"] < trivial["accuracy"]
      or metrics["recon_mse"] >= trivial["recon_mse"]
      or metrics["ink_mse"] >= trivial["ink_mse"]
  )


def digits_steps_per_epoch(data: Digits) -> int:
  return int(data.x_train.shape[0]) // DIGITS_BATCH


def digits_batches(seed: int, num_train: int, steps: int) -> np.ndarray:
  """``[steps, 128]`` train indices: epochs of fresh permutations
  (``default_rng([seed, 1])``)."""
  rng = np.random.default_rng([seed, 1])
  per_epoch = num_train // DIGITS_BATCH
  epochs = -(-steps // per_epoch)
  idx = np.stack([rng.permutation(num_train)[: per_epoch * DIGITS_BATCH]
                  for _ in range(epochs)])
  return idx.reshape(-1, DIGITS_BATCH)[:steps].astype(np.int32)


def observes_after_step(rule: sa.LossWeighting) -> bool:
  """Whether the rule takes the losses after the step (FAMO's exact form).

  Asks the rule itself: in softadapt_jax 0.2.0 ``rule.observes_after_step``
  is also true for ``famo(form="one_pass")``, whose ``observe_after_step``
  raises a ``ValueError``.
  """
  if not rule.observes_after_step:
    return False
  zeros = {name: jnp.zeros(()) for name in rule.names}
  try:
    jax.eval_shape(lambda s: rule.observe_after_step(s, zeros), rule.init())
  except ValueError:
    return False
  return True


def _trainer(losses: Callable[..., Any], rule: sa.LossWeighting,
             tx: optax.GradientTransformationExtraArgs):
  """One step of the library's route (FAMO's exact form observed after it)."""
  grad_fn = sa.weighted_value_and_grad(losses, rule)
  observe = observes_after_step(rule)

  def step(params: Any, opt_state: Any, *batch: Any) -> tuple[Any, Any, Any]:
    out = grad_fn(opt_state, params, *batch)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    new_params: Any = optax.apply_updates(params, updates)
    if observe:  # FAMO's exact form: one extra forward
      opt_state = sa.observe_after_step(opt_state, rule, losses(new_params, *batch))
    return new_params, opt_state, out

  return step


def _run_chunks(segment, carry, xs_chunks, steps, chunk):
  """Runs the compiled chunks; the wall and CPU (all threads) time per step
  from the chunks after the first, which compiles."""
  outs, seconds, cpu = [], [], []
  for i in range(steps // chunk):
    t0, c0 = time.perf_counter(), time.process_time()
    carry, out = segment(carry, jax.tree.map(lambda x: x[i], xs_chunks))
    out = jax.block_until_ready(out)
    seconds.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    outs.append(out)
  n = max(len(seconds) - 1, 1)
  per_step = sum(seconds[1:] or seconds) / (n * chunk)
  cpu_per_step = sum(cpu[1:] or cpu) / (n * chunk)
  return carry, outs, per_step, cpu_per_step


def train_digits(data: Digits, rule: sa.LossWeighting, seed: int, steps: int, *,
                 chunk: int, learning_rate: float = 1e-3,
                 log_every: int = 50) -> dict[str, Any]:
  """One run: the test metrics after every chunk, weights and losses logged.

  Returns:
    ``{"metrics": {step: {"accuracy", "recon_mse", "ink_mse"}}, "log":
    {"step", "weights", "losses"}, "seconds_per_step",
    "cpu_seconds_per_step"}``.
  """
  if steps % chunk or chunk % log_every:
    raise ValueError("steps must be a multiple of chunk, chunk of log_every")
  params = init_digits(seed)
  schedule = optax.cosine_decay_schedule(learning_rate, steps)
  tx = optax.chain(sa.track_weights(rule), optax.adam(schedule))
  step = _trainer(digits_losses, rule, tx)
  idx = digits_batches(seed, int(data.x_train.shape[0]), steps)

  def body(carry, batch_idx):
    params, opt_state = carry
    x = data.x_train[batch_idx]
    params, opt_state, out = step(
        params, opt_state, x, data.y_train[batch_idx], data.ink_train[batch_idx]
    )
    log = {
        "weights": jnp.stack([out.weights[n] for n in DIGITS_NAMES]),
        "losses": jnp.stack([out.losses[n] for n in DIGITS_NAMES]),
    }
    return (params, opt_state), log

  @jax.jit
  def segment(carry, idx_chunk):
    carry, log = jax.lax.scan(body, carry, idx_chunk)
    log = jax.tree.map(lambda v: v[::log_every], log)
    return carry, (log, digits_metrics(carry[0], data))

  carry = (params, tx.init(params))
  idx_chunks = idx.reshape(steps // chunk, chunk, DIGITS_BATCH)
  _, outs, per_step, cpu_per_step = _run_chunks(
      segment, carry, idx_chunks, steps, chunk
  )
  metrics = {
      (i + 1) * chunk: {k: float(v) for k, v in out[1].items()}
      for i, out in enumerate(outs)
  }
  log = jax.tree.map(lambda *v: jnp.concatenate(v), *[o[0] for o in outs])
  return {
      "metrics": metrics,
      "log": {
          "step": list(range(0, steps, log_every)),
          **jax.tree.map(lambda v: np.asarray(v).tolist(), log),
      },
      "seconds_per_step": per_step,
      "cpu_seconds_per_step": cpu_per_step,
  }


# ---------------------------------------------------------------------------
# The two-objective toy.
# ---------------------------------------------------------------------------

TOY_NAMES = ("f1", "f2")
TOY_SCALE = 0.1
TOY_STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
TOY_SHIFT = (-21.0 * TOY_SCALE, -21.0)  # FAMO's min_losses on this problem
TOY_TOLERANCE = 0.01
_CLAMP = 5e-6


def _clamp_below(a: Any, low: float, xp: Any = jnp) -> Any:
  """``max(a, low)`` with torch.clamp's gradient (it passes where ``a >= low``)."""
  return xp.where(a >= low, a, low)


def toy_objectives(x: Any, xp: Any = jnp) -> Any:
  """``[..., 2]``: ``(f1, f2)`` at ``x = (x1, x2)`` (``f1`` scaled by 0.1,
  unshifted); ``xp`` is ``jax.numpy`` (default) or ``numpy``."""
  x1, x2 = x[..., 0], x[..., 1]
  l1 = xp.log(_clamp_below(xp.abs(0.5 * (-x1 - 7) - xp.tanh(-x2)), _CLAMP, xp)) + 6
  l2 = xp.log(_clamp_below(xp.abs(0.5 * (-x1 + 3) + xp.tanh(-x2) + 2), _CLAMP, xp)) + 6
  q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  c1 = _clamp_below(xp.tanh(x2 * 0.5), 0.0, xp)
  c2 = _clamp_below(xp.tanh(-x2 * 0.5), 0.0, xp)
  return xp.stack([TOY_SCALE * (l1 * c1 + q1 * c2), l2 * c1 + q2 * c2], axis=-1)


def toy_losses(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """What every rule is given: the objectives minus FAMO's ``min_losses``."""
  f = toy_objectives(params["x"][0]) - jnp.asarray(TOY_SHIFT)
  return {"f1": f[0], "f2": f[1]}


def pareto_set(num: int = 2801) -> np.ndarray:
  """``[num, 2]`` points ``(x1, x2*(x1))`` of the Pareto set, ``x1`` in [-7, 7]."""
  x1 = np.linspace(-7.0, 7.0, num)
  a = (49.0 - x1**2) / 10.0 - 20.0

  def dh(x2):  # h'(x2) for h = (A + 0.01 (x2 + 8)^2) tanh(-x2 / 2)
    t = np.tanh(-x2 / 2)
    return 0.02 * (x2 + 8) * t - 0.5 * (a + 0.01 * (x2 + 8) ** 2) * (1 - t**2)

  lo, hi = np.full_like(x1, -12.0), np.full_like(x1, -5.0)  # h' < 0, h' > 0
  for _ in range(80):
    mid = 0.5 * (lo + hi)
    neg = dh(mid) < 0
    lo, hi = np.where(neg, mid, lo), np.where(neg, hi, mid)
  return np.stack([x1, 0.5 * (lo + hi)], axis=1)


_PARETO: dict[str, np.ndarray] = {}


def _front() -> dict[str, np.ndarray]:
  if not _PARETO:
    x = pareto_set()
    f = toy_objectives(x, np)
    _PARETO.update(x=x, F=f / np.array([TOY_SCALE, 1.0]))
  return _PARETO


def pareto_gap(points: Any) -> np.ndarray:
  """The Pareto gap of each point ``x`` (0 on the front; ``inf`` if not finite)."""
  p = np.asarray(points, np.float64).reshape(-1, 2)
  with np.errstate(all="ignore"):
    f = toy_objectives(p, np) / np.array([TOY_SCALE, 1.0])
  front = _front()["F"]
  gap = np.max(np.min(f[:, None, :] - front[None], axis=2), axis=1)
  gap = np.maximum(gap, 0.0)
  return np.where(np.all(np.isfinite(f), axis=1), gap, np.inf)


def pareto_distance(points: Any) -> np.ndarray:
  """The Euclidean distance (in ``x``) of each point to the Pareto set."""
  curve = _front()["x"]
  p = np.asarray(points, np.float64).reshape(-1, 2)
  a, b = curve[:-1], curve[1:]  # the segments of the polyline
  ab = b - a
  t = np.einsum("nsd,sd->ns", p[:, None] - a[None], ab) / np.sum(ab * ab, axis=1)
  t = np.clip(t, 0.0, 1.0)
  nearest = a[None] + t[..., None] * ab[None]
  d = np.sqrt(np.min(np.sum((p[:, None] - nearest) ** 2, axis=-1), axis=1))
  return np.where(np.all(np.isfinite(p), axis=1), d, np.inf)


def pareto_stationarity(x: Any, h: float = 1e-6) -> np.ndarray:
  """``min_{w in simplex} |w1 g1 + w2 g2|`` at each point (0 on the front).

  The gradients by central differences in float64 (a diagnostic)."""
  p = np.asarray(x, np.float64).reshape(-1, 2)
  eye = np.eye(2) * h
  with np.errstate(all="ignore"):
    jac = np.stack([(toy_objectives(p + e, np) - toy_objectives(p - e, np)) / (2 * h)
                    for e in eye], axis=-1)  # [n, objective, coordinate]
  g1, g2 = jac[:, 0], jac[:, 1]
  diff = g1 - g2
  denom = np.sum(diff * diff, axis=1)
  w = np.clip(np.sum(-g2 * diff, axis=1) / np.where(denom > 0, denom, 1.0), 0, 1)
  return np.linalg.norm(w[:, None] * g1 + (1 - w[:, None]) * g2, axis=1)


def train_toy(rule: sa.LossWeighting, steps: int, *, chunk: int,
              record_every: int = 500, learning_rate: float = 1e-3) -> dict[str, Any]:
  """The five starts at once (``vmap``), Adam, full gradients.

  Returns:
    ``{"gap": {step: [5]}, "final_x": [5, 2], "final_f": [5, 2] (``f1``
    scaled, as the papers plot it), "on_front": [5], "distance": [5] (in
    ``x``), "stationarity": [5], "trajectory": [5, n, 2] (every
    ``record_every`` steps, the start first and the end last),
    "seconds_per_step", "cpu_seconds_per_step"}`` (a step of the five
    starts).
  """
  if steps % chunk or chunk % record_every:
    raise ValueError("steps must be a multiple of chunk, chunk of record_every")
  tx = optax.chain(sa.track_weights(rule), optax.adam(learning_rate))
  step = _trainer(toy_losses, rule, tx)

  def one_start(start):
    params = {"x": start.reshape(1, 2)}
    return params, tx.init(params)

  def body(carry, _):
    params, opt_state, _ = step(*carry)
    x: jax.Array = params["x"]
    return (params, opt_state), x[0]

  @jax.jit
  @jax.vmap
  def segment(carry, _):
    carry, xs = jax.lax.scan(body, carry, None, length=chunk)
    return carry, xs[record_every - 1 :: record_every]

  starts = jnp.asarray(TOY_STARTS, jnp.float32)
  carry = jax.vmap(one_start)(starts)
  dummy = jnp.zeros((steps // chunk, len(TOY_STARTS)))
  carry, outs, per_step, cpu_per_step = _run_chunks(
      segment, carry, dummy, steps, chunk
  )
  traj = np.concatenate([np.asarray(starts)[:, None]] + [np.asarray(o) for o in outs],
                        axis=1)
  per_chunk = traj[:, chunk // record_every :: chunk // record_every]
  marks = [(i + 1) * chunk for i in range(steps // chunk)]
  final = traj[:, -1]
  gap = pareto_gap(final)
  return {
      "gap": {m: pareto_gap(per_chunk[:, i]).tolist() for i, m in enumerate(marks)},
      "final_x": final.tolist(),
      "final_f": toy_objectives(final, np).tolist(),
      "on_front": (gap <= TOY_TOLERANCE).tolist(),
      "distance": pareto_distance(final).tolist(),
      "stationarity": pareto_stationarity(final).tolist(),
      "trajectory": traj.tolist(),
      "record_every": record_every,
      "seconds_per_step": per_step,  # one step of the five starts
      "cpu_seconds_per_step": cpu_per_step,
  }
