"""Float64 NumPy oracles for the gradient-information weighting rules.

Independent transcriptions, written from the formulas, of ONE update of each
convention that ``grad_balance``, ``gradnorm``, ``famo`` and
``uncertainty_weighting`` are meant to reproduce (GRADIENT.md sections A-C).
Nothing here imports the library or JAX: tests compare the library against
these functions.

Gradient format. A component's gradient is a dict ``{layer: {"w": W, "b": b}}``
in network order (the insertion order of the dict is the layer order; the last
key is the output layer). A rule receives a list of K such dicts, one per loss
component, each the gradient of the UNWEIGHTED component loss ``L_k``; where a
convention differentiates the weighted term ``lam_k L_k`` the function applies
the factor itself (``lam_k > 0``, so ``|d(lam L)| = lam |dL|``).

Sources (commit read in brackets):
  GP   PredictiveIntelligenceLab/GradientPathologiesPINNs [93e752b]
       ``Helmholtz/Helmholtz2D_model_tf.py``, ``Helmholtz/Helmholtz2D.py``
  PN   i207M/PINNacle [6f8d69c] ``src/optimizer/lr_adaptor.py``
  JP   PredictiveIntelligenceLab/jaxpi [e85b694] ``jaxpi/models.py``
  JI   jinns 1.10.2 ``jinns/loss/_loss_weight_updates.py``,
       ``jinns/solver/_utils.py``, ``jinns/loss/_abstract_loss.py``
  NV   NVIDIA/physicsnemo-sym [9dac911] ``physicsnemo/sym/loss/aggregator.py``
  ID   mosaic-group/inverse-dirichlet-pinn [157a3ed] ``pinnutils.py``,
       ``poisson/poisson_adam.py``
  LM   median-research-group/LibMTL [4336804] ``LibMTL/weighting/GradNorm.py``,
       ``UW.py``, ``FAMO.py``, ``LibMTL/trainer.py``, ``LibMTL/config.py``
  FA   Cranial-XIX/FAMO [0a6ad06] ``famo.py``, ``methods/weight_methods.py``
"""

from __future__ import annotations

import math

import numpy as np

Grad = dict  # {layer_name: {"w": ndarray, "b": ndarray}}

# --------------------------------------------------------------------------
# Gradient statistics
# --------------------------------------------------------------------------


def _arrays(g: Grad, params: str = "all") -> list[np.ndarray]:
  """The arrays of one gradient, in layer order (w before b within a layer).

  ``params``: ``"all"`` (weights and biases), ``"weights"`` (the "w" arrays
  only), ``"last_w"`` (the output layer's "w" only: torch ``params[-2]`` of a
  Linear stack) or a tuple of layer names (every array of those layers).
  """
  names = list(g)
  if params == "last_w":
    return [np.asarray(g[names[-1]]["w"], np.float64)]
  if isinstance(params, tuple):
    names = [n for n in names if n in params]
    params = "all"
  out = []
  for name in names:
    keys = ("w",) if params == "weights" else ("w", "b")
    for key in keys:
      if key in g[name]:
        out.append(np.asarray(g[name][key], np.float64))
  return out


def flat(g: Grad, params: str = "all") -> np.ndarray:
  """All selected entries of one gradient as one float64 vector."""
  return np.concatenate([a.ravel() for a in _arrays(g, params)])


def max_abs(g: Grad, params: str = "all") -> float:
  """``max |g|`` over the selected entries (= max over layers of layer max)."""
  return float(max(np.max(np.abs(a)) for a in _arrays(g, params)))


def mean_abs(g: Grad, params: str = "all", how: str = "global") -> float:
  """``mean |g|``.

  ``how="global"``: mean over all selected entries (element-weighted; PN, NV).
  ``how="per_layer"``: mean over arrays of each array's own mean (every array
  counts once whatever its size; GP l.142-147 with ``params="weights"``).
  """
  arrs = _arrays(g, params)
  if how == "per_layer":
    return float(np.mean([np.mean(np.abs(a)) for a in arrs]))
  return float(np.mean(np.abs(np.concatenate([a.ravel() for a in arrs]))))


def mean_abs_of_leaf_means(g: Grad, params: str = "all") -> float:
  """jinns' denominator: mean over leaves of ``|mean(leaf)|`` (signed mean
  first, absolute value after). JI ``lr_annealing`` l.217-221."""
  return float(np.mean([abs(np.mean(a)) for a in _arrays(g, params)]))


def l2_norm(g: Grad, params: str = "all") -> float:
  """Euclidean norm of the flattened selected entries."""
  return float(np.linalg.norm(flat(g, params)))


def std_unbiased(g: Grad, params: str = "all") -> float:
  """Unbiased (n - 1) standard deviation of all selected entries (torch.std)."""
  return float(np.std(flat(g, params), ddof=1))


def std_from_sums(sq_norm: float, total: float, n: int) -> float:
  """The same std from ``||g||^2`` and ``sum_j g_j`` (GRADIENT.md A): the
  form the library can compute with one VJP plus one all-ones JVP."""
  return math.sqrt(max(sq_norm - total * total / n, 0.0) / (n - 1))


# --------------------------------------------------------------------------
# Learning-rate annealing and relatives (GRADIENT.md section A)
# --------------------------------------------------------------------------

# m: the EMA weight on the OLD value, lam <- m * lam + (1 - m) * lam_hat.
# timing: "after_step" = the statistic is taken after the model step of a
# cadence step (on that step's batch) and the new weights are first used in
# the NEXT step; "before_step" = taken before the model step and used in the
# same step's update.
LRA_CONVENTIONS = {
  "wang2021": dict(m=0.9, every=10, reference=0, eps=0.0, timing="after_step"),
  "wang2021_arxiv": dict(m=0.1, every=1, reference=0, eps=0.0, timing="before_step"),
  "pinnacle": dict(m=0.9, every=1, reference=0, eps=0.0, timing="before_step"),
  "jaxpi": dict(m=0.9, every=1000, reference=None, eps=0.0, timing="after_step"),
  "jinns": dict(m=0.1, every=1, reference=0, eps=1e-6, timing="before_step"),
  "physicsnemo": dict(m=0.99, every=1, reference=0, eps=1e-8, timing="before_step"),
  "maddu2022": dict(m=0.5, every=5, reference=0, eps=0.0, timing="before_step"),
}


def _ema(old, new, m):
  return m * np.asarray(old, np.float64) + (1.0 - m) * np.asarray(new)


def lra_wang2021(
  grads, lam, *, reference=0, m=0.9, weighted=True, params="weights", how="per_layer"
):
  """``wang2021``: learning-rate annealing as the authors' code runs it.

  GP ``Helmholtz2D_model_tf.py``: the boundary term enters the loss as
  ``lam * (sum of four edge MSEs)`` (l.103); gradients of the residual loss
  and of that WEIGHTED boundary term w.r.t. the weight matrices only (no
  biases, output layer included, l.131-133); ``max`` over layers of each
  layer's ``max |g_res|`` over ``mean`` over layers of each layer's
  ``mean |g_bcs|`` (l.142-148); EMA ``0.1 * hat + 0.9 * old`` (l.346-347);
  no epsilon. SIAM J. Sci. Comput. 43(5) 2021, Alg. 2.1 writes the same
  (lambda inside the denominator, alpha = 0.1 on the new value).

  ``lam``: length-K weights; ``lam[reference]`` is returned unchanged.
  ``weighted=False`` drops the lambda from the denominator (the arXiv v1 form).
  """
  lam = np.asarray(lam, np.float64)
  top = max_abs(grads[reference], params)
  new = lam.copy()
  for k, g in enumerate(grads):
    if k == reference:
      continue
    denom = mean_abs(g, params, how) * (lam[k] if weighted else 1.0)
    new[k] = _ema(lam[k], top / denom, m)
  return new


def lra_wang2021_arxiv(
  grads, lam, *, reference=0, m=0.1, params="weights", how="per_layer"
):
  """``wang2021_arxiv``: arXiv:2001.04536v1 eq. 39-40.

  ``hat_k = max|grad L_ref| / mean|grad L_k|`` (no lambda), then
  ``lam = (1 - alpha) lam + alpha hat`` with alpha = 0.9 on the NEW value
  (m = 0.1), every step. The paper takes max/mean over all of theta; by
  default this follows GRADIENT.md and uses the code's statistic (weight
  matrices, per-layer means); pass ``params="all", how="global"`` for the
  paper's literal reading.
  """
  return lra_wang2021(
    grads, lam, reference=reference, m=m, weighted=False, params=params, how=how
  )


def lra_pinnacle(grads, lam, *, num_pde=1, alpha=0.1):
  """``pinnacle``: PN ``src/optimizer/lr_adaptor.py`` ``LR_Adaptor.step``.

  Reference statistic: ``max |g|`` over ALL parameters (weights and biases)
  of the gradient of the SUM of the first ``num_pde`` unweighted losses
  (l.31-41). For every later component: ``mean = sum|g_k| / count`` over all
  parameters (element-weighted global mean, l.44-55) of the UNWEIGHTED
  ``L_k``, ``hat = max / (mean * lam_k)`` (l.56), ``lam_k = (1 - alpha) lam_k
  + alpha hat`` (l.57; alpha 0.1). No epsilon. Every call (every step), before
  the model step; the new weights form that same step's loss (l.59-63).
  The first ``num_pde`` weights are never changed.
  """
  lam = np.asarray(lam, np.float64)
  ref = flat(grads[0])
  for g in grads[1:num_pde]:
    ref = ref + flat(g)
  top = float(np.max(np.abs(ref)))
  new = lam.copy()
  for k in range(num_pde, len(grads)):
    hat = top / (mean_abs(grads[k], "all", "global") * lam[k])
    new[k] = (1.0 - alpha) * lam[k] + alpha * hat
  return new


def gradnorm_jaxpi(grads, w, *, momentum=0.9, device_grads=None):
  """``jaxpi``: JP ``jaxpi/models.py`` ``compute_weights`` (scheme
  ``"grad_norm"``, l.133-146) and ``TrainState.apply_weights`` (l.21-41).

  ``hat_k = mean_j ||g_j|| / ||g_k||``, norms over ALL parameters
  (``ravel_pytree``), unweighted losses, no epsilon, no reference (every
  component moves); ``w = momentum * w + (1 - momentum) * hat``. Data
  parallel (``update_weights``, l.162-167): each device computes ``hat`` from
  its own batch, ``lax.pmean`` averages the ``hat`` vectors, then the EMA;
  pass ``device_grads`` = one list of K gradients per device to get that.
  Cadence: ``step % update_every_steps == 0`` (default configs: 1000; the
  backwards_step config comments "100 for grad norm"), called AFTER
  ``model.step`` on the same batch (``examples/*/train.py``).
  """

  def hat_of(gs):
    norms = np.array([l2_norm(g) for g in gs])
    return norms.mean() / norms

  if device_grads is None:
    hat = hat_of(grads)
  else:
    hat = np.mean([hat_of(gs) for gs in device_grads], axis=0)
  return _ema(w, hat, momentum)


def lra_jinns(grads, lam, *, decay_factor=0.9, eps=1e-6):
  """``jinns``: JI ``_loss_weight_updates.py::lr_annealing`` (l.177-231).

  ``grads[0]`` is the dynamic (PDE residual) loss. Numerator: max over the
  leaves of ``max |leaf|`` (all leaves: weights and biases). Denominator for
  each other term: mean over that term's leaves of ``|mean(leaf)|`` (the
  signed mean of each leaf, then abs) + eps. Gradients are of UNWEIGHTED
  terms (``values_and_grads`` then ``ponderate_and_sum_*``).
  ``lam_k = (1 - decay_factor) lam_k + decay_factor hat`` (l.230): with the
  default 0.9 the factor 0.9 sits on the NEW value (m = 0.1). ``lam[0]`` is
  returned unchanged. Called every step before the gradient step; the new
  weights weigh that same step (``solver/_utils.py``).
  """
  lam = np.asarray(lam, np.float64)
  top = max_abs(grads[0], "all")
  new = lam.copy()
  for k in range(1, len(grads)):
    hat = top / (mean_abs_of_leaf_means(grads[k]) + eps)
    new[k] = (1.0 - decay_factor) * lam[k] + decay_factor * hat
  return new


def lra_physicsnemo(grads, lam, *, reference=0, alpha=0.01, eps=1e-8):
  """``physicsnemo``: NV ``aggregator.py::LRAnnealing.forward`` (l.336-394).

  ``mean_k = mean |grad L_k|`` over ALL parameters concatenated (l.373-379;
  losses carry only the static user weights, not lambda); for EVERY k,
  including the reference, ``lam_k = (1 - alpha) lam_k + alpha mean_ref /
  (mean_k + eps)`` (l.382-387; alpha 0.01, eps 1e-8). The reference's own
  weight is therefore updated with ``mean_ref / (mean_ref + eps)``: it stays
  at 1 only up to O(eps / mean_ref). Initial weights 1 (buffer ``lmbda_ema``,
  l.332-334). Applied when ``step % update_freq == 0`` (default 1), before
  the model step, weighting that same step's loss.
  """
  lam = np.asarray(lam, np.float64)
  means = np.array([mean_abs(g, "all", "global") for g in grads])
  return (1.0 - alpha) * lam + alpha * means[reference] / (means + eps)


def inverse_dirichlet_maddu2022(grads, lam, *, reference=0, alpha=0.5):
  """``maddu2022`` (inverse Dirichlet): ID ``pinnutils.py::loss_grad_std_full``
  (l.297-312) and ``poisson/poisson_adam.py`` (l.124-208).

  ``std`` = unbiased (torch default) std over every ``nn.Linear`` weight AND
  bias concatenated (the ``m == 0`` branch never fires, so all Linear layers
  are included); gradients of UNWEIGHTED losses; ``hat_k = std_ref / std_k``;
  ``lam_k = (1 - alpha) lam_k + alpha hat`` with alpha 0.5; no epsilon.
  Every ``mm = 5`` epochs (``epoch % 5 == 0``, epoch 0 included), before the
  step, used in that step (``loss = l_reg + lamb * l_bc``).
  """
  lam = np.asarray(lam, np.float64)
  s = np.array([std_unbiased(g) for g in grads])
  new = (1.0 - alpha) * lam + alpha * s[reference] / s
  new[reference] = lam[reference]
  return new


_LRA_FUNCS = {
  "wang2021": lambda g, w: lra_wang2021(g, w),
  "wang2021_arxiv": lambda g, w: lra_wang2021_arxiv(g, w),
  "pinnacle": lambda g, w: lra_pinnacle(g, w),
  "jaxpi": lambda g, w: gradnorm_jaxpi(g, w),
  "jinns": lambda g, w: lra_jinns(g, w),
  "physicsnemo": lambda g, w: lra_physicsnemo(g, w),
  "maddu2022": lambda g, w: inverse_dirichlet_maddu2022(g, w),
}


def grad_balance_update(convention: str, grads, lam):
  """One update of ``convention`` with its default hyperparameters."""
  return _LRA_FUNCS[convention](grads, lam)


def is_update_step(step: int, every: int) -> bool:
  """Cadence shared by every source: update when ``step % every == 0``
  (0-based step count, so step 0 updates)."""
  return step % every == 0


def lra_weights_used(convention: str, grads_seq, lam0=None):
  """The weights each step's model update uses, over a sequence.

  ``grads_seq[t]``: the K component gradients at which the statistic of
  step t is evaluated (pre-step parameters for "before_step" conventions,
  post-step parameters for "after_step" ones). Returns a ``[T, K]`` array.
  """
  conf = LRA_CONVENTIONS[convention]
  k = len(grads_seq[0])
  lam = np.ones(k) if lam0 is None else np.asarray(lam0, np.float64)
  used = []
  for t, grads in enumerate(grads_seq):
    due = is_update_step(t, conf["every"])
    if conf["timing"] == "before_step" and due:
      lam = grad_balance_update(convention, grads, lam)
    used.append(lam.copy())
    if conf["timing"] == "after_step" and due:
      lam = grad_balance_update(convention, grads, lam)
  return np.array(used)


# --------------------------------------------------------------------------
# Optimizer steps written out (torch Adam, TF1 Adam)
# --------------------------------------------------------------------------


def adam_init(n: int) -> dict:
  return {"m": np.zeros(n), "v": np.zeros(n), "t": 0}


def torch_adam_step(p, g, state, *, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
  """``torch.optim.Adam`` (coupled L2: ``g += wd * p`` BEFORE the moments).

  Identical to optax ``chain(add_decayed_weights(wd), scale_by_adam(b1, b2,
  eps), scale(-lr))``; NOT ``optax.adamw`` (decoupled decay).
  Returns ``(new_p, new_state)``.
  """
  p = np.asarray(p, np.float64)
  g = np.asarray(g, np.float64) + weight_decay * p
  t = state["t"] + 1
  m = b1 * state["m"] + (1 - b1) * g
  v = b2 * state["v"] + (1 - b2) * g * g
  m_hat = m / (1 - b1**t)
  v_hat = v / (1 - b2**t)
  return p - lr * m_hat / (np.sqrt(v_hat) + eps), {"m": m, "v": v, "t": t}


def tf1_adam_step(p, g, state, *, lr, b1=0.9, b2=0.999, eps=1e-8):
  """TF1 ``tf.train.AdamOptimizer`` (used by GP): the epsilon is added to
  ``sqrt(v)`` BEFORE bias correction: ``lr_t = lr sqrt(1-b2^t)/(1-b1^t)``,
  ``p -= lr_t m / (sqrt(v) + eps)``. Equals optax adam with a step-dependent
  ``eps' = eps / sqrt(1 - b2^t)``."""
  p = np.asarray(p, np.float64)
  g = np.asarray(g, np.float64)
  t = state["t"] + 1
  m = b1 * state["m"] + (1 - b1) * g
  v = b2 * state["v"] + (1 - b2) * g * g
  lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
  return p - lr_t * m / (np.sqrt(v) + eps), {"m": m, "v": v, "t": t}


def softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max())
  return e / e.sum()


def softmax_vjp(x, v):
  """``(d softmax(x) / dx)^T v = z * (v - z . v)`` (the Jacobian is
  symmetric)."""
  z = softmax(x)
  v = np.asarray(v, np.float64)
  return z * (v - z @ v)


# --------------------------------------------------------------------------
# GradNorm (GRADIENT.md section B)
# --------------------------------------------------------------------------


def gradnorm_norms(grads, params="all"):
  """``m_k = ||grad_W L_k||`` over the parameter subset W."""
  return np.array([l2_norm(g, params) for g in grads])


def gradnorm_closed_form(m, w, losses, initial_losses, alpha):
  """Chen et al. 2018, Alg. 1, with the target held constant.

  ``n_k = w_k m_k``, ``nbar = mean n``, ``r_k = (L_k/L_k(0)) / mean_j
  (L_j/L_j(0))``, ``T_k = nbar r_k^alpha`` (a constant), ``L_grad = sum_k
  |n_k - T_k|``, ``dL_grad/dw_k = sign(n_k - T_k) m_k``.
  Returns ``(dL_grad/dw, L_grad, n, T)``.
  """
  m = np.asarray(m, np.float64)
  w = np.asarray(w, np.float64)
  ratio = np.asarray(losses, np.float64) / np.asarray(initial_losses)
  r = ratio / ratio.mean()
  n = w * m
  target = n.mean() * r**alpha
  diff = n - target
  return np.sign(diff) * m, float(np.abs(diff).sum()), n, target


def gradnorm_paper_step(
  grads, losses, w, initial_losses, *, alpha=1.5, lr=0.025, params="all"
):
  """Chen et al. 2018, Alg. 1 with plain gradient descent on w: step w by
  ``-lr dL_grad/dw``, then renormalise to ``sum w = K``. Returns
  ``(weights_used_this_step, new_w)`` (the model step uses the old w)."""
  w = np.asarray(w, np.float64)
  m = gradnorm_norms(grads, params)
  dw, _, _, _ = gradnorm_closed_form(m, w, losses, initial_losses, alpha)
  new = w - lr * dw
  return w.copy(), new * (len(w) / new.sum())


GRADNORM_LIBMTL = dict(
  alpha=1.5, lr=1e-4, weight_decay=1e-5, b1=0.9, b2=0.999, eps=1e-8, xi0=1.0
)
GRADNORM_PHYSICSNEMO = dict(
  alpha=1.0, lr=1e-3, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, lam0=0.0
)


def gradnorm_libmtl_init(k):
  return {"xi": np.full(k, GRADNORM_LIBMTL["xi0"]), "adam": adam_init(k)}


def gradnorm_libmtl_step(
  grads, losses, state, initial_losses, *, params="all", **overrides
):
  """LibMTL GradNorm (LM ``GradNorm.py`` l.21-45; optimizer LM
  ``trainer.py`` l.130-144, defaults LM ``config.py`` l.26-28, 46).

  Parameter ``xi`` (``loss_scale``) starts at 1; ``w = K softmax(xi)``
  (sum K, so equal weights at start). ``m_k`` over ALL shared parameters
  (``_get_grads``, unweighted losses). ``initial_losses`` = LibMTL's
  ``train_loss_buffer[:, 0]``: the MEAN training loss over epoch 0, during
  which GradNorm is off (weights 1, ``xi`` untouched). Gradient of L_grad
  w.r.t. xi through the softmax; then ``xi`` moves with the model's own
  optimizer: torch Adam, lr 1e-4, betas (0.9, 0.999), eps 1e-8, L2 weight
  decay 1e-5 (coupled). The model step uses ``w`` from BEFORE this update
  (``loss_scale.detach().clone()``, l.39).
  Returns ``(weights_used, new_state, dL_grad/dxi)``.
  """
  hp = {**GRADNORM_LIBMTL, **overrides}
  xi = state["xi"]
  k = len(xi)
  w = k * softmax(xi)
  m = gradnorm_norms(grads, params)
  dw, _, _, _ = gradnorm_closed_form(m, w, losses, initial_losses, hp["alpha"])
  dxi = softmax_vjp(xi, k * dw)
  new_xi, adam = torch_adam_step(
    xi,
    dxi,
    state["adam"],
    lr=hp["lr"],
    b1=hp["b1"],
    b2=hp["b2"],
    eps=hp["eps"],
    weight_decay=hp["weight_decay"],
  )
  return w, {"xi": new_xi, "adam": adam}, dxi


def gradnorm_physicsnemo_init(k):
  return {
    "lam": np.full(k, GRADNORM_PHYSICSNEMO["lam0"]),
    "adam": adam_init(k),
    "initial_losses": None,
  }


def gradnorm_physicsnemo_step(grads, losses, state, *, params="last_w", **overrides):
  """PhysicsNeMo GradNorm (NV ``aggregator.py::GradNorm.forward``
  l.129-183; optimizer: the trainer's, NV ``trainer.py`` l.507-535).

  Parameter ``lam`` starts at 0. At the start of each call it is shifted in
  place, ``lam += log(K / sum exp(lam))`` (l.154-159), so ``w = exp(lam)``
  sums to K when used. ``initial_losses`` recorded at the first call
  (``step == 0``, l.150-152). ``m_k`` = norm of the gradient w.r.t.
  ``params[-2]`` only (l.171; in a Linear stack: the output layer's weight
  matrix; here ``params="last_w"``). ``L_grad = sum |w_k m_k - T_k|``, with
  ``T`` and ``mean n`` detached; ``dL_grad/dlam_k = sign(.) m_k w_k`` (the
  exp chain rule). ``lam`` is a parameter group of the main optimizer: torch
  Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, no decay (PhysicsNeMo's
  ``AdamConf``; the group is added after the scheduler is built, so the
  scheduler should not decay it: read from torch semantics, not run).
  alpha 1.0 (``AggregatorGradNormConf``). The model loss uses ``w`` detached
  (l.181). Returns ``(weights_used, new_state, dL_grad/dlam)``.
  """
  hp = {**GRADNORM_PHYSICSNEMO, **overrides}
  lam = np.asarray(state["lam"], np.float64)
  k = len(lam)
  lam = lam + math.log(k / np.exp(lam).sum())
  w = np.exp(lam)
  initial = state["initial_losses"]
  if initial is None:
    initial = np.asarray(losses, np.float64).copy()
  m = gradnorm_norms(grads, params)
  dw, _, _, _ = gradnorm_closed_form(m, w, losses, initial, hp["alpha"])
  dlam = dw * w
  new_lam, adam = torch_adam_step(
    lam,
    dlam,
    state["adam"],
    lr=hp["lr"],
    b1=hp["b1"],
    b2=hp["b2"],
    eps=hp["eps"],
    weight_decay=hp["weight_decay"],
  )
  return w, {"lam": new_lam, "adam": adam, "initial_losses": initial}, dlam


# --------------------------------------------------------------------------
# FAMO (GRADIENT.md section C)
# --------------------------------------------------------------------------

FAMO_LR = 0.025
FAMO_GAMMA = {"famo.py": 0.01, "libmtl": 1e-3, "weight_methods.py": 1e-5}
FAMO_EPS = 1e-8


def famo_weights(xi, losses, min_losses=0.0, eps=FAMO_EPS):
  """Effective weights of FA ``famo.py::get_weighted_loss`` (l.28-34).

  The model minimises ``sum_k log(D_k) z_k / c`` with ``z = softmax(xi)``,
  ``D = L - L_min + eps``, ``c = sum z/D`` detached; its gradient is
  ``sum_k lam_k grad L_k`` with ``lam_k = (z_k / D_k) / sum_j (z_j / D_j)``
  (sum 1). ``L_min`` defaults to 0 (``min_losses`` zeros, never updated).
  """
  z = softmax(xi)
  d = np.asarray(losses, np.float64) - min_losses + eps
  q = z / d
  return q / q.sum()


def famo_xi_grad(xi, loss_before, loss_after, min_losses=0.0, eps=FAMO_EPS):
  """FA ``famo.py::update`` l.36-42: ``delta = log D(before) - log D(after)``,
  ``xi.grad = (d softmax / d xi)^T delta``."""
  delta = np.log(np.asarray(loss_before, np.float64) - min_losses + eps) - np.log(
    np.asarray(loss_after, np.float64) - min_losses + eps
  )
  return softmax_vjp(xi, delta)


def famo_xi_update(
  xi,
  adam,
  loss_before,
  loss_after,
  *,
  lr=FAMO_LR,
  gamma=FAMO_GAMMA["famo.py"],
  min_losses=0.0,
):
  """One xi step: torch Adam(lr 0.025, betas (0.9, 0.999), eps 1e-8,
  weight_decay gamma as coupled L2) on ``famo_xi_grad`` (l.43-45)."""
  g = famo_xi_grad(xi, loss_before, loss_after, min_losses)
  return torch_adam_step(xi, g, adam, lr=lr, weight_decay=gamma)


def famo_exact_sequence(
  losses_before,
  losses_after,
  *,
  lr=FAMO_LR,
  gamma=FAMO_GAMMA["famo.py"],
  min_losses=0.0,
):
  """The authors' loop (FA ``famo.py`` l.85-93, LM ``trainer.py`` l.281-284):
  step t weights with xi_t and L_t (``losses_before[t]``), the model steps,
  the losses are recomputed on the SAME batch (``losses_after[t]``, one extra
  forward), then xi_{t+1} = update(xi_t, L_t, L'_t). xi_0 = 0.
  Returns ``(weights [T, K], xi after the last update)``."""
  k = len(losses_before[0])
  xi, adam = np.zeros(k), adam_init(k)
  out = []
  for before, after in zip(losses_before, losses_after, strict=True):
    out.append(famo_weights(xi, before, min_losses))
    xi, adam = famo_xi_update(
      xi, adam, before, after, lr=lr, gamma=gamma, min_losses=min_losses
    )
  return np.array(out), xi


def famo_one_pass_sequence(
  losses, *, lr=FAMO_LR, gamma=FAMO_GAMMA["famo.py"], min_losses=0.0
):
  """The O(1) approximation (not in the sources): no extra forward; at step
  t > 0 the xi update uses the previous step's losses and this step's
  (``update(xi, L_{t-1}, L_t)``, each on its own batch) BEFORE the weights of
  step t are formed. Coincides with ``famo_exact_sequence`` when
  ``losses_after[t] == losses[t + 1]`` (full batch, deterministic).
  Returns ``(weights [T, K], xi)``."""
  k = len(losses[0])
  xi, adam = np.zeros(k), adam_init(k)
  out = []
  for t, cur in enumerate(losses):
    if t > 0:
      xi, adam = famo_xi_update(
        xi, adam, losses[t - 1], cur, lr=lr, gamma=gamma, min_losses=min_losses
      )
    out.append(famo_weights(xi, cur, min_losses))
  return np.array(out), xi


# --------------------------------------------------------------------------
# Uncertainty weighting (GRADIENT.md section C)
# --------------------------------------------------------------------------

UW_INIT = {"libmtl": -0.5, "physicsnemo": 0.0}
UW_OPTIMIZER = {
  "libmtl": dict(lr=1e-4, weight_decay=1e-5),  # the model's Adam (LM config)
  "physicsnemo": dict(lr=1e-3, weight_decay=0.0),  # the trainer's Adam group
}


def uw_loss(losses, s, form="libmtl"):
  """Kendall et al. 2018 with ``s = log sigma^2``.

  LM ``UW.py`` l.22: ``sum_k L_k / (2 e^{s_k}) + s_k / 2``.
  NV ``HomoscedasticUncertainty.forward`` l.296-303:
  ``(sum_k e^{-s_k} L_k + sum_k s_k) / 2``.
  The two are the same function of (L, s); only the initial s differs
  (LM -0.5, NV 0) and the optimizer that moves s.
  """
  losses = np.asarray(losses, np.float64)
  s = np.asarray(s, np.float64)
  if form == "libmtl":
    return float(np.sum(losses / (2.0 * np.exp(s)) + s / 2.0))
  if form == "physicsnemo":
    return float((np.sum(np.exp(-s) * losses) + np.sum(s)) / 2.0)
  raise ValueError(form)


def uw_grad_s(losses, s):
  """``dL/ds_k = (1 - e^{-s_k} L_k) / 2`` (both forms); zero at
  ``e^{s_k} = L_k``."""
  return 0.5 * (
    1.0 - np.exp(-np.asarray(s, np.float64)) * np.asarray(losses, np.float64)
  )


def uw_weights(s):
  """Weights on the L_k: ``1 / (2 e^{s_k})`` (LM l.24 returns this)."""
  return 0.5 * np.exp(-np.asarray(s, np.float64))


def uw_step(losses, s, adam, form="libmtl"):
  """One s step with the source's optimizer (torch Adam, coupled L2).
  Returns ``(weights_used, new_s, new_adam)``."""
  hp = UW_OPTIMIZER[form]
  new_s, adam = torch_adam_step(s, uw_grad_s(losses, s), adam, **hp)
  return uw_weights(s), new_s, adam


# --------------------------------------------------------------------------
# The Helmholtz benchmark's closed forms (GP ``Helmholtz2D.py`` l.10-35)
# --------------------------------------------------------------------------


def helmholtz_exact(x, a1=1.0, a2=4.0):
  """``u = sin(a1 pi x1) sin(a2 pi x2)`` on ``[-1, 1]^2``; x: ``[N, 2]``."""
  x = np.asarray(x, np.float64)
  return np.sin(a1 * np.pi * x[:, 0:1]) * np.sin(a2 * np.pi * x[:, 1:2])


def helmholtz_forcing(x, a1=1.0, a2=4.0, k2=1.0):
  """``f = u_xx + u_yy + k2 u = (k2 - (a1^2 + a2^2) pi^2) u``."""
  return (k2 - (a1**2 + a2**2) * np.pi**2) * helmholtz_exact(x, a1, a2)


def tf1_exponential_decay(step, init=1e-3, every=1000, rate=0.9):
  """``tf.train.exponential_decay(1e-3, step, 1000, 0.9, staircase=False)``
  = ``optax.exponential_decay(1e-3, 1000, 0.9)`` at count ``step``."""
  return init * rate ** (step / every)


# --------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------


def _example_grads(seed=0, k=3, sizes=(2, 5, 4, 1), scales=(1.0, 0.05, 3.0)):
  rng = np.random.default_rng(seed)
  out = []
  for j in range(k):
    g = {}
    for i in range(len(sizes) - 1):
      g[f"layer_{i}"] = {
        "w": scales[j] * rng.standard_normal((sizes[i], sizes[i + 1])),
        "b": scales[j] * rng.standard_normal(sizes[i + 1]),
      }
    out.append(g)
  return out


def _self_check():
  grads = _example_grads()
  lam = np.array([1.0, 2.0, 0.5])
  print("LRA one update from lam =", lam)
  for name in LRA_CONVENTIONS:
    new = grad_balance_update(name, grads, lam)
    print(f"  {name:15s} {new}")
    assert np.all(np.isfinite(new))
    assert np.all(new > 0)
  for name in ("wang2021", "wang2021_arxiv", "pinnacle", "jinns", "maddu2022"):
    assert grad_balance_update(name, grads, lam)[0] == lam[0]
  assert abs(lra_physicsnemo(grads, np.ones(3))[0] - 1.0) < 1e-7

  # wang2021 by hand for component 1
  top = max(np.abs(grads[0][n]["w"]).max() for n in grads[0])
  mean1 = np.mean([np.abs(grads[1][n]["w"]).mean() for n in grads[1]])
  hand = 0.9 * 2.0 + 0.1 * top / (2.0 * mean1)
  assert abs(lra_wang2021(grads, lam)[1] - hand) < 1e-12

  # the std identity used for maddu2022
  v = flat(grads[1])
  std = std_from_sums(float(v @ v), float(v.sum()), v.size)
  assert abs(std - std_unbiased(grads[1])) < 1e-12

  # cadence and timing
  seq = [_example_grads(seed=t) for t in range(12)]
  used = lra_weights_used("wang2021", seq)
  assert np.all(used[0] == 1.0)
  assert np.all(used[1:11] == used[1])
  assert np.any(used[11] != used[10])
  print("  wang2021 weights used at steps 0, 1, 11:", used[0], used[1], used[11])
  used = lra_weights_used("maddu2022", seq)
  assert np.any(used[0] != 1.0)
  assert np.all(used[1:5] == used[0])

  # jaxpi data parallel: pmean of per-device hat (device 0 alone = local)
  two = [grads, _example_grads(seed=5)]
  w_dp = gradnorm_jaxpi(None, np.ones(3), device_grads=two)
  w_0 = gradnorm_jaxpi(grads, np.ones(3))
  w_1 = gradnorm_jaxpi(two[1], np.ones(3))
  assert np.allclose(w_dp, (w_0 + w_1) / 2)

  # GradNorm: closed form against central differences of L_grad in w
  losses = np.array([0.7, 0.02, 4.0])
  l0 = np.array([1.0, 0.05, 5.0])
  m = gradnorm_norms(grads)
  w = np.array([0.8, 1.5, 0.7])
  dw, _, _, target = gradnorm_closed_form(m, w, losses, l0, 1.5)

  def lgrad(wv):
    return np.abs(wv * m - target).sum()  # target held constant

  h = 1e-6
  fd = np.array([(lgrad(w + h * e) - lgrad(w - h * e)) / (2 * h) for e in np.eye(3)])
  assert np.allclose(fd, dw, rtol=1e-6, atol=1e-8)
  st = gradnorm_libmtl_init(3)
  w_used, st, dxi = gradnorm_libmtl_step(grads, losses, st, l0)
  assert np.allclose(w_used, 1.0)
  # dxi against central differences through w = K softmax(xi)
  # (the target depends on w through nbar: hold it fixed at its value at xi)
  xi = np.array([0.3, -0.2, 0.1])
  dw_xi = gradnorm_closed_form(m, 3 * softmax(xi), losses, l0, 1.5)
  target = dw_xi[3]
  fd = np.array(
    [
      (
        np.abs(3 * softmax(xi + h * e) * m - target).sum()
        - np.abs(3 * softmax(xi - h * e) * m - target).sum()
      )
      / (2 * h)
      for e in np.eye(3)
    ]
  )
  assert np.allclose(fd, softmax_vjp(xi, 3 * dw_xi[0]), rtol=1e-6, atol=1e-8)
  st = gradnorm_physicsnemo_init(3)
  for _ in range(3):
    w_used, st, _ = gradnorm_physicsnemo_step(grads, losses, st)
    assert abs(w_used.sum() - 3.0) < 1e-12
  print("  GradNorm LibMTL dxi:", dxi, " PhysicsNeMo w:", w_used)
  _, w_new = gradnorm_paper_step(grads, losses, np.ones(3), l0)
  assert abs(w_new.sum() - 3.0) < 1e-12

  # FAMO: exact == one-pass when after[t] == before[t + 1]
  rng = np.random.default_rng(1)
  traj = (
    np.exp(-0.1 * np.arange(9)[:, None] * np.array([1.0, 3.0, 0.3]))
    * np.array([1.0, 10.0, 0.1])
    * (1 + 0.01 * rng.random((9, 3)))
  )
  we, _ = famo_exact_sequence(traj[:-1], traj[1:])
  wo, _ = famo_one_pass_sequence(traj[:-1])
  assert np.allclose(we, wo, rtol=0, atol=1e-15)
  assert np.allclose(we.sum(1), 1.0)
  print("  FAMO weights at t = 0, 7:", we[0], we[-1])

  # UW: both forms agree; closed-form ds against central differences
  s = np.array([-0.5, 0.2, 1.0])
  assert abs(uw_loss(losses, s, "libmtl") - uw_loss(losses, s, "physicsnemo")) < 1e-14
  fd = np.array(
    [
      (uw_loss(losses, s + h * e) - uw_loss(losses, s - h * e)) / (2 * h)
      for e in np.eye(3)
    ]
  )
  assert np.allclose(fd, uw_grad_s(losses, s), rtol=1e-7, atol=1e-9)
  w_used, s_new, _ = uw_step(losses, np.full(3, UW_INIT["libmtl"]), adam_init(3))
  print("  UW LibMTL initial weights:", w_used, " s after one step:", s_new)

  # torch and TF1 Adam differ only by where epsilon sits (tiny here)
  p1 = p2 = np.array([1.0])
  a1 = a2 = adam_init(1)
  for i in range(5):
    p1, a1 = torch_adam_step(p1, np.array([0.1 * (i + 1)]), a1, lr=1e-3)
    p2, a2 = tf1_adam_step(p2, np.array([0.1 * (i + 1)]), a2, lr=1e-3)
  assert 0 < abs(p1[0] - p2[0]) < 1e-7
  assert (
    abs(helmholtz_forcing(np.array([[0.5, 0.125]]))[0, 0] - (1 - 17 * np.pi**2)) < 1e-12
  )
  print("self-check passed")


if __name__ == "__main__":
  _self_check()
