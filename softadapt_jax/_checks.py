"""Static argument checks shared by every public entry point.

Every check runs in Python at construction or trace time (shapes and static
arguments are known then), and raises a ``ValueError`` or ``TypeError`` that
names the argument, the value given and what was expected.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

VARIANTS = ("original", "normalized", "loss_weighted")
# The highest accuracy order of a slope. The (p+1)-point stencil multiplies
# independent noise on the losses by ||c||_2: 1.4 at p = 1, 8.2 at p = 5, 95 at
# p = 10, 1,763 at p = 15; in float32 its rounding error, up to
# ||c||_1 * 2**-24 * max|L|, reaches the size of a realistic slope near
# p = 20 and inverts the slopes by p = 30. Up to p = 10 every stencil is
# accurate to float32 rounding (||c||_1 * 2**-24 < 1.5e-5 of the loss scale)
# and the noise gain stays under 100x; above, an order buys noise, not
# accuracy, and is refused.
MAX_ORDER = 10
NORMALIZATIONS = ("signed", "l1")
STENCILS = ("forward", "backward")


def check_int(name: str, value: Any, *, minimum: int) -> int:
  """Returns ``value`` as a Python int ``>= minimum`` or raises."""
  if isinstance(value, bool) or not _is_integer(value):
    raise TypeError(
        f"`{name}` must be a Python int >= {minimum} (a static value), got "
        f"{value!r} of type {type(value).__name__}. (Under "
        "optax.inject_hyperparams, list it in static_args.)"
    )
  value = operator.index(value)
  if value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")
  return value


def _is_integer(value: Any) -> bool:
  try:
    operator.index(value)
  except TypeError:
    return False
  return True


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
  """Returns ``value`` if it is one of ``choices`` or raises ``ValueError``."""
  if value not in choices:
    raise ValueError(
        f"`{name}` must be one of {', '.join(map(repr, choices))}; got "
        f"{value!r}."
    )
  return value


def is_concrete(value: Any) -> bool:
  """Whether ``value`` is known now (not a tracer inside jit/vmap/grad)."""
  return not any(isinstance(v, Tracer) for v in jax.tree.leaves(value))


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> None:
  """Checks a float setting: a finite scalar in range, when it is concrete.

  Traced values (inside ``jit``, ``vmap`` or ``inject_hyperparams``) are
  checked for their shape only; each rule documents what it does with a
  traced value out of range.
  """
  kind = getattr(getattr(value, "dtype", None), "kind", None)
  if kind is None and not isinstance(value, bool):
    kind = np.asarray(value).dtype.kind if value is not None else None
  if kind not in ("f", "i", "u"):
    raise TypeError(
        f"`{name}` must be a finite float, got {value!r} of type "
        f"{type(value).__name__}."
    )
  check_scalar(name, value)
  if not is_concrete(value):
    return
  x = float(np.asarray(value))
  expected = ["finite"]
  ok = math.isfinite(x)
  if positive:
    expected.append("> 0")
    ok = ok and x > 0
  if minimum is not None:
    expected.append(f">= {minimum}")
    ok = ok and x >= minimum
  if maximum is not None:
    expected.append(f"<= {maximum}")
    ok = ok and x <= maximum
  if not ok:
    raise ValueError(
        f"`{name}` must be a float that is {' and '.join(expected)}; got {x!r}."
    )


def check_scalar(name: str, value: Any) -> None:
  """Raises ``ValueError`` unless ``value`` is a scalar (traced or not)."""
  shape = np.shape(value)
  if shape != ():
    raise ValueError(
        f"`{name}` must be a scalar (a float or a 0-d array), got shape "
        f"{shape}. To sweep over `{name}`, use jax.vmap."
    )


def check_floating(name: str, value: Any) -> None:
  """Raises ``TypeError`` unless ``value`` has a real floating dtype."""
  dtype = jnp.result_type(value)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must have a real floating dtype (float16, bfloat16, "
        f"float32, float64), got {dtype}."
    )


def check_floating_or_int(name: str, value: Any) -> None:
  """Raises ``TypeError`` unless ``value`` has a real numeric dtype."""
  dtype = jnp.result_type(value)
  if not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  ):
    raise TypeError(
        f"`{name}` must have a real floating or integer dtype, got {dtype}."
    )


def check_history(history: Any) -> None:
  """Raises unless ``history`` is a floating ``[n, K]`` array with n >= 2."""
  shape = np.shape(history)
  if len(shape) != 2:
    raise ValueError(
        "`history` must be a 2-d array of shape [n, K] (rows are time steps, "
        f"oldest first; columns are loss components), got shape {shape}."
    )
  if shape[0] < 2:
    raise ValueError(
        "`history` must hold at least 2 rows (time steps) to estimate a slope, "
        f"got shape {shape}."
    )
  if shape[1] < 1:
    raise ValueError(f"`history` must have K >= 1 columns, got shape {shape}.")
  check_floating("history", history)


def check_order(order: Any) -> int:
  """Returns ``order`` as an int in ``[1, MAX_ORDER]`` or raises."""
  order = check_int("order", order, minimum=1)
  if order > MAX_ORDER:
    raise ValueError(
        f"`order` must be <= {MAX_ORDER}, got {order}: a finite-difference "
        "slope of order p multiplies the noise of the losses by the 2-norm of "
        "its stencil (95x at p = 10, 1,763x at p = 15), and in float32 its "
        "rounding error grows until the slopes invert (p = 30). Use a low "
        "order and `update_every`, or feed epoch means, to smooth instead."
    )
  return order


def resolve_order(order: Any, num_rows: int) -> int:
  """Returns the finite-difference order for a history of ``num_rows`` rows.

  ``None`` means the whole history (``num_rows - 1``). An order needs
  ``order + 1`` rows.
  """
  if order is None:
    order = num_rows - 1
    if order > MAX_ORDER:
      raise ValueError(
          f"`order`=None uses the whole history, order {order} for its "
          f"{num_rows} rows, above the maximum {MAX_ORDER}: pass an order "
          f"<= {MAX_ORDER} (the newest order + 1 rows are used)."
      )
    return order
  order = check_order(order)
  if order >= num_rows:
    raise ValueError(
        f"`order`={order} needs {order + 1} rows of history, but the history "
        f"has {num_rows} rows; use order <= {num_rows - 1} or order=None."
    )
  return order
