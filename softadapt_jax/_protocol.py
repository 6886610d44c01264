"""The kit for writing a loss-weighting rule, and the protocol every rule follows.

A rule is a :class:`LossWeighting`. Its author writes two small functions on
``[K]`` vectors: ``init_fn(dtype, key) -> state`` and
``update_fn(state, losses) -> state``. The kit does everything every rule
needs, once: named losses, argument checks, the cast to the state's dtype,
``stop_gradient``, the ``pmean`` over a data axis, skipping non-finite loss
vectors (the state is left as it was and ``num_skipped`` counts the skip),
and diagnostics for logging. Static configuration (``K``, cadence, the axis
name) lives in the closures; float hyperparameters stay traceable, so a rule
built inside ``jax.vmap`` or ``optax.inject_hyperparams`` sweeps them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from softadapt_jax import _checks
from softadapt_jax._statistics import GradientStatistics, zeros_like_statistics
from softadapt_jax._structure import LossSpec, LossStructure

_INT32_MAX = jnp.iinfo(jnp.int32).max

AxisName = str | tuple[str, ...] | None
State = Any
InitFn = Callable[[jnp.dtype, Any], State]
UpdateFn = Callable[[State, jax.Array], State]
DiagnosticsFn = Callable[[State], Mapping[str, jax.Array]]


class LossWeighting:
  """A loss-weighting rule: a pure-functional state machine over loss vectors.

  Every factory of this package (:func:`softadapt`, :func:`relobralo`,
  :func:`equal_weights`, ...) returns one; the Optax routes
  (:func:`track_weights`, :func:`combine_grads`,
  :func:`weighted_value_and_grad`) take one and nothing else. To write a new
  rule, give the two core functions on ``[K]`` vectors:

  - ``init_fn(dtype, key) -> state``: a ``NamedTuple`` of arrays with at least
    the fields ``count`` (int32 scalar), ``weights`` (``[K]``, in ``dtype``)
    and ``num_skipped`` (int32 scalar); ``key`` is the PRNG key given to
    :meth:`init` (or ``None``).
  - ``update_fn(state, losses) -> state``: ``losses`` is a finite ``[K]``
    vector in the state's dtype, and ``state.count`` already counts it; the
    returned state's ``weights`` are the weights for this step.

  A rule that needs statistics of the per-component gradients declares them
  (``statistics``, a :class:`GradientStatistics`) and when it needs them
  (``cadence``, a function of the state's ``clock``: an int32 field counting
  every call, recorded or not, which the kit advances outside any data-
  dependent branch so that under ``vmap`` over hyperparameters it stays
  unbatched and the routes skip the expensive gradients on the other steps
  for real). Its core is then ``update_fn(state, losses, statistics, due)``,
  with ``statistics`` a dict of ``[K]`` arrays (and ``"gramian"``, ``[K, K]``)
  computed by the routes, zeros when ``due`` is false.

  Args:
    init_fn: the core ``init``.
    update_fn: the core ``update``.
    num_losses: ``K``; or the names of the losses (a sequence of strings: the
      losses are then a mapping with these keys); or a ``PyTreeDef`` of any
      pytree of scalar losses. Weights come back in the same structure.
    axis_name: the mapped data axis the losses are averaged over inside
      ``shard_map``/``pmap`` before they are recorded, or ``None``.
    diagnostics_fn: ``state -> {name: [K] or scalar array}``, what the rule
      logs besides its weights (e.g. the slopes of SoftAdapt).
    skip_fn: ``state -> state`` on a skipped (non-finite) step, for a rule
      that counts steps whether or not they are recorded (e.g.
      :func:`per_epoch`); by default the state is left as it was. It must
      keep the state's ``weights``.
    statistics: what the rule consumes of the per-component gradients, or
      ``None`` for a rule of loss values.
    cadence: ``clock -> bool``, the steps on which the statistics are needed
      (default: every step).
    observe_fn: ``(state, losses_after) -> state``, for a rule that learns
      from the losses after the model step on the same batch (FAMO's exact
      form): see :meth:`observe_after_step`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.ratio_softadapt(["residual", "boundary"])
    >>> state = rule.init()
    >>> w, state = rule.update(state, {"residual": 1.0, "boundary": 2.0})
    >>> {k: float(v) for k, v in w.items()}   # the first vector: weights 1
    {'residual': 1.0, 'boundary': 1.0}
  """

  def __init__(
      self,
      init_fn: InitFn,
      update_fn: UpdateFn,
      num_losses: LossSpec | LossStructure,
      *,
      axis_name: AxisName = None,
      diagnostics_fn: DiagnosticsFn | None = None,
      skip_fn: Callable[[State], State] | None = None,
      statistics: GradientStatistics | None = None,
      cadence: Callable[[jax.Array], jax.Array] | None = None,
      observe_fn: Callable[[State, jax.Array], State] | None = None,
  ) -> None:
    self.structure = (
        num_losses
        if isinstance(num_losses, LossStructure)
        else LossStructure(num_losses)
    )
    self.num_losses: int = self.structure.num_losses
    self.names: tuple[str, ...] = self.structure.names
    self.axis_name = axis_name
    self._init_fn = init_fn
    self._update_fn = update_fn
    self._diagnostics_fn = diagnostics_fn
    self._skip_fn = skip_fn
    self.statistics = statistics
    self._cadence = cadence
    self._observe_fn = observe_fn

  def __repr__(self) -> str:
    return (
        f"LossWeighting(state={self.state_type.__name__}, "
        f"losses={self.structure.describe()}, axis_name={self.axis_name!r})"
    )

  @functools.cached_property
  def state_type(self) -> type:
    """The ``NamedTuple`` class of this rule's state."""
    return type(jax.eval_shape(self.init))

  def init(self, *, key: ArrayLike | None = None, dtype: Any = None) -> State:
    """A fresh state.

    Args:
      key: seeds the rules that draw random numbers (default: the rule's
        ``seed``); ignored by the others.
      dtype: the floating dtype of the state (default float32; never lower).

    Returns:
      The rule's state, a ``NamedTuple`` of arrays.
    """
    state = self._init_fn(state_dtype(dtype), key)
    self.check_state(state, "init_fn")
    return state

  def update(
      self, state: State, losses: Any, statistics: Any = None
  ) -> tuple[Any, State]:
    """Records one loss vector and returns the weights for it.

    Args:
      state: this rule's state.
      losses: the ``K`` losses of this step, in the rule's structure (a
        ``[K]`` array, or a mapping / pytree of named scalars), any float dtype.
      statistics: for a rule that needs them (``rule.statistics``), the
        statistics of this step's per-component gradients, ``{name: [K]}``
        (and ``"gramian"``: ``[K, K]``), in the rule's order of the losses;
        the routes compute them. Only read on the steps the rule is due.

    Returns:
      ``(weights, new_state)``: the weights in the structure of the losses
      (carrying no gradient), and the new state, whose ``weights`` they are.
      A loss vector with a non-finite entry is not recorded: the state is
      returned unchanged but for ``num_skipped``, with its held weights.
    """
    weights, state, _, _ = self.advance(
        state, self.structure.flatten(losses), statistics=statistics
    )
    return self.structure.unflatten(weights), state

  @property
  def observes_after_step(self) -> bool:
    """Whether the rule learns from the losses after the step (see below)."""
    return self._observe_fn is not None

  def observe_after_step(self, state: State, losses: Any) -> State:
    """Feeds the losses after the model step, on the same batch, to the rule.

    For the rules that learn from how much a step lowered the losses (FAMO's
    exact form): one extra forward at the new parameters on the step's batch.

    Args:
      state: this rule's state, as the step recorded it.
      losses: the losses at the new parameters on the same batch, in the
        rule's structure.

    Returns:
      The new state (a non-finite loss vector leaves it unchanged).
    """
    if self._observe_fn is None:
      raise TypeError(
          "this rule takes no losses after the step: only rules that learn "
          "from the decrease over a step do (e.g. famo(form='exact'))."
      )
    self.check_state(state)
    vector = self.structure.flatten(losses)
    vector = jax.lax.stop_gradient(vector).astype(state.weights.dtype)
    if self.axis_name is not None:
      vector = jax.lax.pmean(vector, self.axis_name)
    return self._observe_fn(state, vector)

  def due(self, state: State) -> jax.Array:
    """Whether this step needs the gradient statistics (a bool from the clock)."""
    if self.statistics is None:
      return jnp.bool_(False)
    if self._cadence is None:
      return jnp.bool_(True)
    return jnp.asarray(self._cadence(state.clock))

  def advance(
      self,
      state: State,
      losses: jax.Array,
      *,
      prepared: bool = False,
      statistics: Any = None,
  ) -> tuple[jax.Array, State, jax.Array, jax.Array]:
    """The vector form of :meth:`update`, for the routes and combinators.

    Args:
      state: this rule's state.
      losses: ``[K]`` losses.
      prepared: the losses are already cast, averaged over ``axis_name`` and
        free of gradients (a combinator feeding its inner rule).
      statistics: the gradient statistics, for a rule that needs them.

    Returns:
      ``(weights, new_state, losses, recorded)``: the ``[K]`` weights, the
      state, the ``[K]`` losses as recorded (cast, averaged) and whether they
      were recorded (a traced bool).
    """
    self.check_state(state)
    dtype = state.weights.dtype
    if not prepared:
      losses = jax.lax.stop_gradient(jnp.asarray(losses)).astype(dtype)
      if self.axis_name is not None:
        losses = jax.lax.pmean(losses, self.axis_name)
    recorded = jnp.all(jnp.isfinite(losses))
    safe = jnp.where(recorded, losses, jnp.ones_like(losses))
    counted = state._replace(count=saturating_increment(state.count, recorded))
    if self.statistics is None:
      if statistics is not None:
        raise TypeError(
            "this rule reads loss values only: it takes no `statistics`."
        )
      new = self._update_fn(counted, safe)
    else:
      due = self.due(state)
      statistics = self._check_statistics(statistics, dtype)
      finite = jnp.all(
          jnp.stack([jnp.all(jnp.isfinite(v)) for v in statistics.values()])
      )
      recorded = recorded & (finite | ~due)
      statistics = jax.tree.map(
          lambda v: jnp.where(recorded & due, v, jnp.ones_like(v)), statistics
      )
      new = self._update_fn(counted, safe, statistics, due & recorded)  # type: ignore[call-arg]
    held = state if self._skip_fn is None else self._skip_fn(state)
    new = jax.tree.map(lambda n, o: jnp.where(recorded, n, o), new, held)
    new = new._replace(
        num_skipped=saturating_increment(state.num_skipped, ~recorded)
    )
    if "clock" in state._fields:
      # Every call, outside the data-dependent selection above: a clock that
      # starts unbatched stays unbatched under vmap.
      new = new._replace(clock=saturating_increment(state.clock, True))
    return jax.lax.stop_gradient(new.weights), new, losses, recorded

  def diagnostics(self, state: State, *, flat: bool = False) -> dict[str, Any]:
    """What to log from a state: its weights and the rule's own signals.

    Pure JAX: return it from the body of a ``lax.scan`` and every step comes
    out stacked. Prefer :func:`diagnostics`, which also finds the state
    inside an ``opt_state``.

    Args:
      state: this rule's state.
      flat: return ``{"weight/<name>": scalar, ..., "count": ...}`` for a
        metric writer instead of ``{"weight": <losses' structure>, ...}``.

    Returns:
      A dict of arrays: ``"weight"`` (the weights of the last step), the
      rule's own per-component signals in the losses' structure, and the
      scalars ``"count"`` and ``"num_skipped"``.
    """
    entries = self.diagnostic_vectors(state)
    k = self.num_losses
    out: dict[str, Any] = {}
    for key, value in entries.items():
      per_component = jnp.shape(value)[-1:] == (k,) and key not in (
          "count",
          "num_skipped",
      )
      if not per_component:
        out[key] = value
      elif flat:
        for i, name in enumerate(self.names):
          out[f"{key}/{name}"] = value[..., i]
      else:
        out[key] = self.structure.unflatten(value)
    return out

  def _check_statistics(self, statistics: Any, dtype: Any) -> dict[str, jax.Array]:
    spec = self.statistics
    assert spec is not None
    if statistics is None:
      raise TypeError(
          "this rule needs statistics of the per-component gradients: use "
          "weighted_value_and_grad(fun, rule) or combine_grads(rule), which "
          "compute them, or pass rule.update(state, losses, statistics)."
      )
    expected = jax.eval_shape(
        lambda: zeros_like_statistics(spec, self.num_losses, dtype)
    )
    if set(statistics) != set(expected):
      raise ValueError(
          f"`statistics` must have the keys {sorted(expected)}, got "
          f"{sorted(statistics)}."
      )
    out = {}
    for name, value in statistics.items():
      value = jax.lax.stop_gradient(jnp.asarray(value))
      if value.shape != expected[name].shape:
        raise ValueError(
            f"`statistics[{name!r}]` must have shape {expected[name].shape}, "
            f"got {value.shape}."
        )
      out[name] = value.astype(dtype)
    return out

  def diagnostic_vectors(self, state: State) -> dict[str, jax.Array]:
    """:meth:`diagnostics` with ``[K]`` vectors instead of named losses."""
    self.check_state(state)
    entries: dict[str, jax.Array] = {"weight": state.weights}
    if self._diagnostics_fn is not None:
      entries.update(self._diagnostics_fn(state))
    entries["count"] = state.count
    entries["num_skipped"] = state.num_skipped
    return entries

  def check_state(self, state: Any, what: str = "state") -> None:
    """Raises unless ``state`` has this rule's state layout (trace time)."""
    fields = getattr(state, "_fields", ())
    missing = [f for f in ("count", "weights", "num_skipped") if f not in fields]
    if missing:
      raise TypeError(
          f"`{what}` must be a NamedTuple state with the fields count, weights "
          f"and num_skipped (missing {missing}), got {type(state).__name__}."
      )
    if what == "state" and not isinstance(state, self.state_type):
      raise TypeError(
          f"`state` must be a {self.state_type.__name__} (from this rule's "
          f"init), got {type(state).__name__}."
      )
    shape = jnp.shape(state.weights)
    if shape != (self.num_losses,):
      raise ValueError(
          f"`{what}.weights` must have shape ({self.num_losses},) for this "
          f"rule's num_losses={self.num_losses}, got {shape}."
      )


def state_dtype(dtype: Any) -> jnp.dtype:
  """The dtype a state is kept in: floating, at least float32."""
  if dtype is None:
    return jnp.dtype(jnp.float32)
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(
        f"`dtype` must be a floating dtype (e.g. jnp.float32), got {dtype}."
    )
  if jnp.dtype(dtype).itemsize >= 4:
    return jnp.dtype(dtype)
  return jnp.dtype(jnp.float32)


def total_weight(num_losses: int, scale_by_num_losses: bool) -> float:
  """What the weights sum to: ``K`` if ``scale_by_num_losses`` else 1."""
  return float(num_losses) if scale_by_num_losses else 1.0


def uniform_weights(num_losses: int, total: float, dtype: Any) -> jax.Array:
  return jnp.full((num_losses,), total / num_losses, dtype)


def check_initial_weights(
    initial_weights: ArrayLike | Sequence[float] | None,
    num_losses: int,
    total: float,
    *,
    name: str = "initial_weights",
) -> None:
  """Concrete initial weights must be ``[K]``, finite, >= 0 and sum to ``total``."""
  if initial_weights is None:
    return
  shape = np.shape(initial_weights)
  if shape != (num_losses,):
    raise ValueError(
        f"`{name}` must have shape ({num_losses},) to match `num_losses`="
        f"{num_losses}, got shape {shape}."
    )
  if not _checks.is_concrete(initial_weights):
    return
  w = np.asarray(initial_weights, np.float64)
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError(f"`{name}` must be finite and >= 0, got {w.tolist()}.")
  if not np.isclose(w.sum(), total, rtol=1e-5, atol=0.0):
    raise ValueError(
        f"`{name}` must sum to {total:g} (the weights' configured total; "
        f"scale_by_num_losses sets it to K), got {w.tolist()} summing to "
        f"{w.sum():g}."
    )


def saturating_increment(
    counter: jax.Array, condition: jax.Array | bool
) -> jax.Array:
  """``counter + 1`` where ``condition`` holds, never past the int32 maximum."""
  return jnp.where(condition & (counter < _INT32_MAX), counter + 1, counter)


def bounded(z: jax.Array) -> jax.Array:
  """``z`` with NaN at 0 and every entry clipped to a quarter of the range.

  Differences and sums of two bounded values cannot overflow, so a softmax
  of them never meets ``inf - inf`` and never produces an internal inf
  (``jax_debug_infs`` stays quiet).
  """
  big = jnp.finfo(z.dtype).max / 4
  return jnp.clip(jnp.nan_to_num(z, nan=0.0, posinf=big, neginf=-big), -big, big)


def scaled_softmax(
    z: jax.Array, temperature: ArrayLike, total: float
) -> jax.Array:
  """``total * softmax(z / temperature)``, max-shifted and overflow-free.

  ``z / temperature`` is formed without overflow (huge ratios saturate), so a
  tiny temperature or a huge ratio sends all weight to the largest entry. A
  (traced) temperature below the smallest normal float is clamped to it.
  """
  t = jnp.maximum(jnp.asarray(temperature, z.dtype), jnp.finfo(z.dtype).tiny)
  big = jnp.finfo(z.dtype).max / 4
  z = bounded(z)
  # Shift by the max first (exact for the largest entry), then divide: a
  # shift below -big * min(t, 1) saturates, so no quotient overflows.
  d = z - z[jnp.argmax(z)]
  e = jnp.exp(jnp.maximum(d, -big * jnp.minimum(t, 1)) / t)
  return (total * e / jnp.sum(e)).astype(z.dtype)


def exp_shifted(
    z: jax.Array,
    scale: ArrayLike = 1.0,
    offset: jax.Array | None = None,
    live: jax.Array | None = None,
) -> jax.Array:
  """``exp(u - max(u))`` for ``u = scale * z + offset``: the softmax's numerators.

  Each entry is in (0, 1] and the largest is exactly 1; entries not ``live``
  are exactly 0. The shift is formed as ``scale * (z - z_i) + (offset -
  offset_i)`` at the arg-max ``i`` rather than as ``u - max(u)``: XLA may fuse
  the latter into an FMA that keeps more precision than the rounded ``u`` the
  max saw, so that at ``|u| ~ 1e10`` the largest entry comes out shifted by
  ~1e3 and ``exp`` overflows or loses the mass. Callers keep ``|scale * z|``
  and ``|offset|`` within a quarter of the range (no overflow in the
  differences).
  """
  scale = jnp.asarray(scale, z.dtype)
  u = scale * z if offset is None else scale * z + offset
  if live is not None:
    u = jnp.where(live, u, -jnp.finfo(z.dtype).max)
  i = jnp.argmax(u)
  d = scale * (z - z[i])
  if offset is not None:
    d = d + (offset - offset[i])
  e = jnp.exp(jnp.minimum(d, 0.0))
  return e if live is None else jnp.where(live, e, 0.0)


def safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` where ``den != 0``, and ``sign(num) * big`` where it is 0.

  For guarded ratios of losses (the guard, e.g. ``+ epsilon``, is the rule's
  own): a component that grows from exactly 0 gets a huge ratio, 0 / 0 gives
  0, and no inf is ever formed.
  """
  big = jnp.finfo(num.dtype).max / 4
  nonzero = den != 0
  tiny = jnp.finfo(num.dtype).tiny
  # Divide by a denominator no smaller than |num| / big: no overflow.
  floor = jnp.maximum(jnp.abs(num) / big, tiny)
  safe_den = jnp.where(nonzero, jnp.sign(den) * jnp.maximum(jnp.abs(den), floor), 1)
  return jnp.where(nonzero, num / safe_den, jnp.sign(num) * big)


def check_seed(seed: Any) -> Any:
  """A rule's ``seed``: a Python int >= 0, or a PRNG key (traced allowed).

  A key lets ``vmap`` over keys give each run its own stream through every
  route, ``track_weights(rule).init`` included.
  """
  if isinstance(seed, int) and not isinstance(seed, bool):
    return _checks.check_int("seed", seed, minimum=0)
  return key_data(seed, name="seed")


def key_data(key: Any, seed: Any = 0, *, name: str = "key") -> jax.Array:
  """Raw ``uint32`` key data from a typed or raw key (or from ``seed``).

  States keep raw key data so they checkpoint, ``where``-select and
  tree-map like any other array.
  """
  if key is None:
    if isinstance(seed, int):
      return jax.random.key_data(jax.random.key(seed))
    return seed
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  if not hasattr(key, "dtype") and not isinstance(key, (list, tuple, np.ndarray)):
    raise TypeError(
        f"`{name}` must be an int or a PRNG key (jax.random.key or "
        f"jax.random.PRNGKey), got {key!r} of type {type(key).__name__}."
    )
  key = jnp.asarray(key)
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise TypeError(
        f"`{name}` must be a PRNG key (jax.random.key or jax.random.PRNGKey), "
        f"got an array of dtype {key.dtype} and shape {key.shape}."
    )
  return key


def split_key(data: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(next_key_data, subkey)`` from raw key data."""
  key = jax.random.wrap_key_data(data)
  next_key, sub = jax.random.split(key)
  return jax.random.key_data(next_key), sub


def check_rule(rule: Any, name: str = "rule") -> LossWeighting:
  if not isinstance(rule, LossWeighting):
    raise TypeError(
        f"`{name}` must be a LossWeighting (e.g. softadapt_jax.softadapt(K), "
        f"softadapt_jax.relobralo(K)), got {type(rule).__name__}."
    )
  return rule


class CoupledAdamState(NamedTuple):
  """State of :func:`coupled_adam`."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  mu: Any
  nu: Any


def coupled_adam(
    learning_rate: ArrayLike,
    weight_decay: ArrayLike = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
  """torch's ``Adam(lr, weight_decay)``: L2 added to the gradient, then Adam.

  The same numbers as ``chain(add_decayed_weights(wd), scale_by_adam(),
  scale(-lr))`` (not ``adamw``, whose decay is decoupled), written so that
  every operation keeps the parameters' dtype (it runs under
  ``jax.numpy_dtype_promotion("strict")``): the optimizer the published rules
  with learnable weights step their parameters with.
  """

  def init_fn(params: Any) -> CoupledAdamState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return CoupledAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

  def update_fn(
      updates: Any, state: CoupledAdamState, params: Any = None
  ) -> tuple[Any, CoupledAdamState]:
    count = saturating_increment(state.count, True)

    def one(g: jax.Array, p: jax.Array, m: jax.Array, v: jax.Array) -> Any:
      dtype = p.dtype
      c = lambda x: jnp.asarray(x, dtype)
      g = g.astype(dtype) + c(weight_decay) * p
      m = c(b1) * m + c(1 - b1) * g
      v = c(b2) * v + c(1 - b2) * g * g
      t = count.astype(dtype)
      m_hat = m / (1 - c(b1) ** t)
      v_hat = v / (1 - c(b2) ** t)
      return -c(learning_rate) * m_hat / (jnp.sqrt(v_hat) + c(eps)), m, v

    out = jax.tree.map(one, updates, params, state.mu, state.nu)
    is_triple = lambda x: isinstance(x, tuple) and len(x) == 3
    pick = lambda i: jax.tree.map(lambda x: x[i], out, is_leaf=is_triple)
    return pick(0), CoupledAdamState(count, pick(1), pick(2))

  return optax.GradientTransformation(init_fn, update_fn)  # type: ignore[arg-type]


def softmax_vjp(logits: jax.Array, cotangent: jax.Array) -> jax.Array:
  """``(d softmax / d logits)^T v = z * (v - z . v)`` with ``z = softmax(logits)``."""
  z = jax.nn.softmax(logits)
  return z * (cotangent - jnp.dot(z, cotangent))


def mix_uniform(weights: jax.Array, uniform_mix: Any) -> jax.Array:
  """``(1 - m) w + m sum(w) / K``: every loss keeps ``m / K`` of the total.

  Weights summing to 1 get at least ``m / K`` each. Rules whose weights can
  fall to (nearly) 0 for a loss that can reach its minimum alone (FAMO's
  ``1 / L``; MGDA's min-norm point; IMTL-G's and Aligned-MTL's
  ``1 / ||g||`` when that loss's gradient vanishes) stop training the other
  losses: on the Helmholtz PINN of the studies the boundary loss is 0 at
  ``u = 0`` and the network learned nothing. The mix bounds the ratio of two
  nonnegative weights by about ``K / m``.
  """
  if isinstance(uniform_mix, (int, float)) and uniform_mix == 0:
    return weights  # the published rule, bit for bit
  m = jnp.asarray(uniform_mix, weights.dtype)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  return (1 - m) * weights + m * total / weights.shape[-1]
