"""The protocol every loss-weighting rule follows, and the pieces rules share.

A rule is a :class:`LossWeighting`: ``init`` builds a ``NamedTuple`` state of
arrays, ``update(state, losses) -> (weights, new_state)`` records one loss
vector and returns the weights for it. Static configuration (``K``, cadence,
the axis name) lives in the closure; float hyperparameters stay traceable, so
a rule built inside ``jax.vmap`` or ``optax.inject_hyperparams`` sweeps them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from softadapt_jax import _checks

_INT32_MAX = jnp.iinfo(jnp.int32).max

AxisName = str | tuple[str, ...] | None


class InitFn(Protocol):
  """``init(*, key=None, dtype=None) -> state``."""

  def __call__(self, *, key: ArrayLike | None = None, dtype: Any = None) -> Any:
    ...


class UpdateFn(Protocol):
  """``update(state, losses) -> (weights, new_state)``."""

  def __call__(self, state: Any, losses: ArrayLike) -> tuple[jax.Array, Any]:
    ...


class LossWeighting(NamedTuple):
  """A loss-weighting rule: a pure-functional state machine over loss vectors.

  Attributes:
    init: ``init(*, key=None, dtype=None) -> state``. ``key`` seeds the rules
      that draw random numbers (default: the rule's ``seed``); ``dtype`` is
      the floating dtype of the state (default float32, never lower).
    update: ``update(state, losses) -> (weights, new_state)``: records the
      ``[K]`` loss vector (skipping it if it is non-finite, or non-positive
      for rules that divide by losses or take their log) and returns the
      ``[K]`` weights to apply to it. Jittable, scannable and vmappable.
    num_losses: ``K`` (static).
    axis_name: the mapped data axis the losses are averaged over inside
      ``shard_map``/``pmap`` before they are recorded, or ``None``; the
      one-VJP helper averages the direction over the same axis.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.ratio_softadapt(2)
    >>> state = rule.init()
    >>> w, state = rule.update(state, jnp.array([1.0, 1.0]))
    >>> w.tolist()   # the first loss vector is the reference: weights 1
    [1.0, 1.0]
  """

  init: InitFn
  update: UpdateFn
  num_losses: int
  axis_name: AxisName = None


def check_num_losses(num_losses: Any) -> int:
  return _checks.check_int("num_losses", num_losses, minimum=1)


def state_dtype(dtype: Any) -> jnp.dtype:
  """The dtype a state is kept in: floating, at least float32."""
  if dtype is None:
    return jnp.dtype(jnp.float32)
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(
        f"`dtype` must be a floating dtype (e.g. jnp.float32), got {dtype}."
    )
  return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def total_weight(num_losses: int, scale_by_num_losses: bool) -> float:
  """What the weights sum to: ``K`` if ``scale_by_num_losses`` else 1."""
  return float(num_losses) if scale_by_num_losses else 1.0


def uniform_weights(num_losses: int, total: float, dtype: Any) -> jax.Array:
  return jnp.full((num_losses,), total / num_losses, dtype)


def prepare_losses(
    losses: ArrayLike, num_losses: int, dtype: Any, axis_name: AxisName
) -> jax.Array:
  """Checks ``losses`` is a floating ``[K]`` vector, casts it, ``pmean``s it."""
  losses = jnp.asarray(losses)
  if losses.shape != (num_losses,):
    raise ValueError(
        f"`losses` must have shape ({num_losses},) to match the state's "
        f"num_losses={num_losses}, got shape {losses.shape}."
    )
  _checks.check_floating("losses", losses)
  losses = losses.astype(dtype)
  if axis_name is not None:
    losses = jax.lax.pmean(losses, axis_name)
  return losses


def is_recordable(losses: jax.Array, *, positive: bool) -> jax.Array:
  """Whether a loss vector may enter a rule's state (a traced bool)."""
  ok = jnp.all(jnp.isfinite(losses))
  if positive:
    ok = ok & jnp.all(losses > 0)
  return ok


def saturating_increment(counter: jax.Array, condition: jax.Array) -> jax.Array:
  """``counter + 1`` where ``condition`` holds, never past the int32 maximum."""
  return jnp.where(condition & (counter < _INT32_MAX), counter + 1, counter)


def scaled_softmax(z: jax.Array, total: float) -> jax.Array:
  """``total * softmax(z)``, max-shifted; huge or infinite ``z`` saturate."""
  finfo = jnp.finfo(z.dtype)
  z = jnp.nan_to_num(z, nan=0.0, posinf=finfo.max, neginf=finfo.min)
  return total * jax.nn.softmax(z)


def key_data(key: ArrayLike | None, seed: int) -> jax.Array:
  """Raw ``uint32`` key data from a typed or raw key (or from ``seed``).

  States keep raw key data so they checkpoint, ``where``-select and
  tree-map like any other array.
  """
  if key is None:
    key = jax.random.key(seed)
  if _is_typed_key(key):
    return jax.random.key_data(key)
  key = jnp.asarray(key)
  if key.dtype != jnp.uint32:
    raise TypeError(
        f"`key` must be a PRNG key (jax.random.key or jax.random.PRNGKey), got "
        f"an array of dtype {key.dtype}."
    )
  return key


def _is_typed_key(key: Any) -> bool:
  return hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def split_key(data: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(next_key_data, subkey)`` from raw key data."""
  key = jax.random.wrap_key_data(data)
  next_key, sub = jax.random.split(key)
  return jax.random.key_data(next_key), sub


def find_weighting_state(tree: Any, state_type: Any) -> Any:
  """The single state of a rule inside ``tree`` (e.g. an ``opt_state``).

  Built on ``optax.tree.get``; leaves wrapped by containers such as Flax NNX's
  optimizer come back as plain arrays.

  Args:
    tree: a rule's state, or a pytree holding exactly one of its type.
    state_type: the state's class (e.g. ``ReLoBRaLoState``) or the
      :class:`LossWeighting` rule itself.

  Returns:
    That state.

  Raises:
    ValueError: if ``tree`` holds none, or more than one.

  Example:
    >>> import optax, softadapt_jax as sa
    >>> rule = sa.dwa(3)
    >>> opt_state = optax.chain(sa.track_weights(rule), optax.sgd(0.1)).init(0.0)
    >>> int(sa.find_weighting_state(opt_state, rule).num_epochs)
    0
  """
  if isinstance(state_type, LossWeighting):
    state_type = state_type_of(state_type)
  if isinstance(tree, state_type):
    return tree
  name = state_type.__name__
  try:
    found = optax.tree.get(tree, name)
  except KeyError as e:
    raise ValueError(
        f"more than one {name} found in the given tree; pass the one you mean "
        "explicitly."
    ) from e
  if not isinstance(found, state_type):
    raise ValueError(
        f"no {name} found in the given tree: put the rule's track_weights(...) "
        "or combine_grads(...) in the optimizer chain, or pass the state "
        f"itself (got {type(tree).__name__})."
    )
  return state_type(*(jnp.asarray(field) for field in found))


def state_type_of(rule: LossWeighting) -> type:
  """The ``NamedTuple`` class of ``rule``'s state (traced abstractly)."""
  return type(jax.eval_shape(rule.init))


def check_rule(rule: Any) -> LossWeighting:
  if not isinstance(rule, LossWeighting):
    raise TypeError(
        "`rule` must be a LossWeighting (e.g. softadapt_jax.softadapt(K), "
        f"softadapt_jax.relobralo(K)), got {type(rule).__name__}."
    )
  return rule


def check_state(state: Any, state_type: type, num_losses: int) -> None:
  if not isinstance(state, state_type):
    raise TypeError(
        f"`state` must be a {state_type.__name__} (from this rule's init), got "
        f"{type(state).__name__}."
    )
  shape = jnp.shape(state.weights)
  if shape != (num_losses,):
    raise ValueError(
        f"`state.weights` must have shape ({num_losses},) for this rule's "
        f"num_losses={num_losses}, got {shape}."
    )

