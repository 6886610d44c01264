"""Learning-rate annealing: weights from ratios of gradient statistics, every form."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax import _statistics as st
from softadapt_jax._structure import LossSpec, LossStructure

STATISTICS = (
    "max/mean_per_leaf",
    "max/mean",
    "max/abs_leaf_mean",
    "mean/mean",
    "std/std",
    "mean_norm/norm",
)


class GradBalanceConvention(TypedDict):
  """The settings of :func:`grad_balance` that reproduce one published form."""

  statistic: str
  weights_only: bool
  reference: int | None
  weighted_denominator: bool
  momentum: float
  update_every: int
  after_step: bool
  epsilon: float
  update_reference: bool


# Each published form of learning-rate annealing (see docs/gradient_rules.md):
# ``grad_balance(K, **GRAD_BALANCE_CONVENTIONS["jinns"])``.
GRAD_BALANCE_CONVENTIONS: Mapping[str, GradBalanceConvention] = types.MappingProxyType({
    # Wang, Teng, Perdikaris, SIAM J. Sci. Comput. 43(5) 2021, Alg. 2.1, as
    # the official code computes it (GradientPathologiesPINNs,
    # Helmholtz/Helmholtz2D_model_tf.py): max over the weight matrices of the
    # reference's gradient over the mean of per-matrix means of the weighted
    # term's gradient, EMA 0.9 on the old value, every 10 steps, after the step.
    "wang2021": GradBalanceConvention(
        statistic="max/mean_per_leaf", weights_only=True, reference=0,
        weighted_denominator=True, momentum=0.9, update_every=10,
        after_step=True, epsilon=0.0, update_reference=False,
    ),
    # arXiv:2001.04536v1, eq. (40): no weight in the denominator, 0.9 on the
    # new value, every step (diverges on the Helmholtz benchmark).
    "wang2021_arxiv": GradBalanceConvention(
        statistic="max/mean_per_leaf", weights_only=True, reference=0,
        weighted_denominator=False, momentum=0.1, update_every=1,
        after_step=False, epsilon=0.0, update_reference=False,
    ),
    # PINNacle, src/optimizer/lr_adaptor.py: every parameter, global mean,
    # weighted denominator, every step, before it.
    "pinnacle": GradBalanceConvention(
        statistic="max/mean", weights_only=False, reference=0,
        weighted_denominator=True, momentum=0.9, update_every=1,
        after_step=False, epsilon=0.0, update_reference=False,
    ),
    # jaxpi (the "expert's guide", grad-norm weighting): mean of the norms
    # over each norm, every component weighted, every 1000 steps, after.
    "jaxpi": GradBalanceConvention(
        statistic="mean_norm/norm", weights_only=False, reference=None,
        weighted_denominator=False, momentum=0.9, update_every=1000,
        after_step=True, epsilon=0.0, update_reference=False,
    ),
    # jinns, loss/_loss_weight_updates.py, lr_annealing: max of the reference
    # over the mean over leaves of |mean(leaf)|, 0.9 on the new value.
    "jinns": GradBalanceConvention(
        statistic="max/abs_leaf_mean", weights_only=False, reference=0,
        weighted_denominator=False, momentum=0.1, update_every=1,
        after_step=False, epsilon=1e-6, update_reference=False,
    ),
    # PhysicsNeMo-Sym, loss/aggregator.py, LRAnnealing: mean over mean, EMA
    # 0.99, the reference's own weight smoothed as well.
    "physicsnemo": GradBalanceConvention(
        statistic="mean/mean", weights_only=False, reference=0,
        weighted_denominator=False, momentum=0.99, update_every=1,
        after_step=False, epsilon=1e-8, update_reference=True,
    ),
    # Maddu et al. 2022 (inverse Dirichlet weighting), pinnutils.py: ratio of
    # unbiased standard deviations, EMA 0.5, every 5 steps.
    "maddu2022": GradBalanceConvention(
        statistic="std/std", weights_only=False, reference=0,
        weighted_denominator=False, momentum=0.5, update_every=5,
        after_step=False, epsilon=0.0, update_reference=False,
    ),
})


class GradBalanceState(NamedTuple):
  """State of :func:`grad_balance`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    clock: int32 scalar, calls (recorded or not): drives the cadence.
    weights: ``[K]`` the weights ``lambda`` (1 for the reference component).
    ratio: ``[K]`` the ratios ``lambda_hat`` of the last update (the value
      the moving average moves towards), 1 before the first.
    num_skipped: int32 scalar, skipped steps (non-finite losses, or
      non-finite statistics on a step that needed them).
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  ratio: jax.Array
  num_skipped: jax.Array


def _std(stats: st.Statistics) -> jax.Array:
  n = stats["n"]
  var = (stats["sq"] - stats["sum"] ** 2 / n) / jnp.maximum(n - 1, 1)
  return jnp.sqrt(jnp.maximum(var, 0.0))


def _reducer(statistic: str) -> Callable[[st.Leaves], st.Statistics]:
  if statistic == "max/mean_per_leaf":
    return lambda g: {"max": st.max_abs(g), "mean": st.mean_of_leaf_mean_abs(g)}
  if statistic == "max/mean":
    return lambda g: {"max": st.max_abs(g), "mean": st.mean_abs(g)}
  if statistic == "max/abs_leaf_mean":
    return lambda g: {"max": st.max_abs(g), "mean": st.mean_of_abs_leaf_mean(g)}
  if statistic == "mean/mean":
    return lambda g: {"mean": st.mean_abs(g)}
  if statistic == "std/std":
    return lambda g: {
        "sq": st.squared_norm(g),
        "sum": st.total(g),
        "n": jnp.asarray(st.num_entries(g), g[0].dtype),
    }
  return lambda g: {"norm": jnp.sqrt(st.squared_norm(g))}


def grad_balance(
    num_losses: LossSpec,
    *,
    statistic: str = "max/mean_per_leaf",
    weights_only: bool = True,
    reference: int | None = 0,
    weighted_denominator: bool = True,
    momentum: ArrayLike = 0.9,
    update_every: int = 10,
    after_step: bool = True,
    epsilon: ArrayLike = 0.0,
    update_reference: bool = False,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Learning-rate annealing (Wang, Teng, Perdikaris): gradient-statistic balancing.

  .. math::
    \hat\lambda_k = \frac{S_{\mathrm{num}}(g_{\mathrm{ref}})}
      {S_{\mathrm{den}}(g_k)\,[\lambda_k] + \epsilon}, \qquad
    \lambda_k \leftarrow m\,\lambda_k + (1 - m)\,\hat\lambda_k

  on the steps of the cadence, with ``g_k`` the gradient of the unweighted
  component ``k``, the reference component's weight fixed at 1, and the
  statistics ``S`` of ``statistic``:

  - ``max/mean_per_leaf``: ``max |g_ref|`` over the mean over leaves of
    ``mean |g_k,leaf|`` (each leaf, e.g. each weight matrix, counts once);
  - ``max/mean``: ``max |g_ref|`` over ``mean |g_k|`` over every entry;
  - ``max/abs_leaf_mean``: ``max |g_ref|`` over the mean over leaves of
    ``|mean g_k,leaf|`` (jinns);
  - ``mean/mean``: ``mean |g_ref|`` over ``mean |g_k|``;
  - ``std/std``: unbiased ``std(g_ref)`` over unbiased ``std(g_k)``;
  - ``mean_norm/norm``: ``mean_j ||g_j||`` over ``||g_k||`` (no reference).

  The defaults are the form of the official code of Wang et al. (SIAM 2021):
  weight matrices only (not biases), the gradient of the weighted term in the
  denominator, EMA 0.9 on the old value, every 10 steps, from the parameters
  after the previous step. ``GRAD_BALANCE_CONVENTIONS`` holds every published
  form; ``grad_balance(K, **GRAD_BALANCE_CONVENTIONS["jinns"])`` reproduces
  jinns' ``lr_annealing``, and so on (docs: gradient rules).

  The statistics are computed by the routes from the per-component gradients
  on the steps of the cadence only: ``K`` gradients then (on top of the one
  VJP of the direction), the one VJP alone otherwise.
  ``after_step=True`` reads the statistics of the step after the update step
  (the parameters the official code reads after its update, on the next
  batch instead of the same one: with fresh points every step, the same in
  distribution). A component whose denominator is 0 (a gradient that
  vanishes) keeps its weight on that update instead of getting an infinite
  one. Under a data axis, the per-component gradients are averaged over it
  before the statistics (exact; jaxpi averages the local ratios instead).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    statistic: one of the rows above.
    weights_only: the statistics look at the leaves with two or more axes
      (weight matrices) only, as the official code of Wang et al.
    reference: the reference component (its weight stays 1), or ``None`` for
      ``mean_norm/norm``, which weights every component.
    weighted_denominator: the denominator is the gradient of the weighted
      term ``lambda_k L_k`` (SIAM paper, official code, PINNacle).
    momentum: ``m``, the EMA factor on the OLD value, in [0, 1] (traced).
    update_every: the cadence, in calls (static int >= 1).
    after_step: update on the step after each multiple of ``update_every``.
    epsilon: added to the denominator, ``>= 0`` (traced).
    update_reference: the reference's own weight is smoothed towards
      ``S(g_ref) / (S(g_ref) + epsilon)`` too (PhysicsNeMo).
    wrt: ``(path, leaf) -> bool``, a subset of the parameters to take the
      statistics on (e.g. a shared trunk), or ``None`` for all.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`GradBalanceState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(p):   # a residual and a boundary term, on their own data
    ...   return jnp.stack([jnp.sum((p["w"] @ jnp.ones(2)) ** 2),
    ...                     jnp.sum((p["w"] - 3.0) ** 2) / 8])
    >>> rule = sa.grad_balance(2, **sa.GRAD_BALANCE_CONVENTIONS["jinns"])
    >>> params = {"w": jnp.ones((2, 2))}
    >>> out = sa.weighted_value_and_grad(losses, rule)(rule.init(), params)
    >>> [round(float(x), 2) for x in out.weights]   # 1, 0.1 * 1 + 0.9 * 4 / 0.5
    [1.0, 7.3]

  References:
    Wang, Teng, Perdikaris, *Understanding and mitigating gradient flow
    pathologies in physics-informed neural networks*, SIAM J. Sci. Comput.
    43(5), 2021 (arXiv:2001.04536); Maddu et al., *Inverse Dirichlet weighting
    enables reliable training of physics informed neural networks*, Mach.
    Learn.: Sci. Technol. 3, 2022.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_choice("statistic", statistic, STATISTICS)
  update_every = _checks.check_int("update_every", update_every, minimum=1)
  _checks.check_float("momentum", momentum, minimum=0.0, maximum=1.0)
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  if statistic == "mean_norm/norm":
    if reference is not None:
      raise ValueError(
          "`reference` must be None for statistic='mean_norm/norm' (every "
          f"component is weighted), got {reference!r}."
      )
  else:
    if reference is None:
      raise ValueError(
          f"`reference` must be a component index for statistic={statistic!r}, "
          "got None."
      )
    reference = _checks.check_int("reference", reference, minimum=0)
    if reference >= k:
      raise ValueError(
          f"`reference` must be < num_losses={k}, got {reference}."
      )
  phase = 1 if after_step else 0

  def select(path: str, leaf: jax.Array) -> bool:
    if weights_only and jnp.ndim(leaf) < 2:
      return False
    return wrt is None or wrt(path, leaf)

  spec = st.GradientStatistics(per_component=_reducer(statistic), wrt=select)

  def cadence(clock: jax.Array) -> jax.Array:
    return (clock >= phase) & ((clock - phase) % update_every == 0)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> GradBalanceState:
    del key  # deterministic
    return GradBalanceState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.ones((k,), dtype),
        ratio=jnp.ones((k,), dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: GradBalanceState,
      losses: jax.Array,
      stats: st.Statistics,
      due: jax.Array,
  ) -> GradBalanceState:
    del losses  # the weights follow the gradients
    lam = state.weights
    dtype = lam.dtype
    eps = jnp.asarray(epsilon, dtype)
    if statistic == "mean_norm/norm":
      num = jnp.broadcast_to(jnp.mean(stats["norm"]), (k,))
      den = stats["norm"]
    elif statistic == "std/std":
      s = _std(stats)
      num, den = jnp.broadcast_to(s[reference], (k,)), s
    elif statistic == "mean/mean":
      num, den = jnp.broadcast_to(stats["mean"][reference], (k,)), stats["mean"]
    else:
      num, den = jnp.broadcast_to(stats["max"][reference], (k,)), stats["mean"]
    if weighted_denominator:
      den = den * lam
    den = den + eps
    informative = den > 0
    hat = jnp.where(informative, _protocol.safe_ratio(num, den), lam)
    if reference is not None and not update_reference:
      hat = hat.at[reference].set(1.0)
    m = jnp.clip(jnp.asarray(momentum, dtype), 0.0, 1.0)
    moved = m * lam + (1 - m) * hat
    return state._replace(
        weights=jnp.where(due, moved, lam).astype(dtype),
        ratio=jnp.where(due, hat, state.ratio).astype(dtype),
    )

  def diagnostics_fn(state: GradBalanceState) -> dict[str, jax.Array]:
    return {"ratio": state.ratio}

  return _protocol.LossWeighting(
      init_fn,
      update_fn,  # type: ignore[arg-type]
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
      statistics=spec,
      cadence=cadence,
  )
