"""Static argument checks shared by every public entry point.

Every check runs in Python at construction or trace time (shapes and static
arguments are known then), and raises a ``ValueError`` or ``TypeError`` that
names the argument, the value given and what was expected.
"""

from __future__ import annotations

import operator
from typing import Any

import jax.numpy as jnp

VARIANTS = ("original", "normalized", "loss_weighted")
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


def check_scalar(name: str, value: Any) -> None:
  """Raises ``ValueError`` unless ``value`` is a scalar (traced or not)."""
  shape = jnp.shape(value)
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


def check_history(history: Any) -> None:
  """Raises unless ``history`` is a floating ``[n, K]`` array with n >= 2."""
  shape = jnp.shape(history)
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


def resolve_order(order: Any, num_rows: int) -> int:
  """Returns the finite-difference order for a history of ``num_rows`` rows.

  ``None`` means the whole history (``num_rows - 1``). An order needs
  ``order + 1`` rows.
  """
  if order is None:
    return num_rows - 1
  order = check_int("order", order, minimum=1)
  if order >= num_rows:
    raise ValueError(
        f"`order`={order} needs {order + 1} rows of history, but the history "
        f"has {num_rows} rows; use order <= {num_rows - 1} or order=None."
    )
  return order
