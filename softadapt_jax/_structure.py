"""Named losses: the structure a rule's ``[K]`` vectors are read from and written to.

A rule is built from ``K``, from the names of its losses, or from the
structure of any pytree of scalar losses. Inside, every rule works on ``[K]``
vectors; this module turns what the user passes (a ``[K]`` array, a dict of
named scalars, any pytree of scalars) into that vector and turns weights back
into the user's structure. The structure is static: a loss pytree of another
structure is an error at trace time that names both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from softadapt_jax import _checks

# What a rule can be built from: K, the names of the losses, or a structure
# (a ``jax.tree_util.PyTreeDef``, which type checkers cannot name: ``Any``).
LossSpec = int | Sequence[str] | Any


class LossStructure:
  """How a rule's ``[K]`` vectors map to the user's losses (static).

  Attributes:
    num_losses: ``K``.
    names: ``K`` strings naming the components, in the order of the rule's
      vectors (``"0"``, ``"1"``, ... for a rule built from ``K``).
    kind: ``"vector"`` (a ``[K]`` array), ``"names"`` (a mapping with these
      keys) or ``"tree"`` (a pytree of this ``treedef``).
  """

  def __init__(self, spec: Any) -> None:
    self.treedef: Any = None  # a PyTreeDef for kind "tree"
    if isinstance(spec, jax.tree_util.PyTreeDef):
      self.kind = "tree"
      self.treedef = spec
      self.num_losses = spec.num_leaves
      if self.num_losses < 1:
        raise ValueError(
            f"`num_losses` as a structure must have at least one leaf, got {spec}."
        )
      paths = jax.tree_util.tree_flatten_with_path(
          jax.tree.unflatten(spec, [0] * self.num_losses)
      )[0]
      self.names = tuple(
          jax.tree_util.keystr(path, simple=True, separator="/")
          for path, _ in paths
      )
    elif isinstance(spec, (str, Mapping)):
      raise TypeError(
          "`num_losses` must be an int K, a sequence of loss names (e.g. "
          "['residual', 'boundary']) or a PyTreeDef, got "
          f"{spec!r} of type {type(spec).__name__}."
      )
    elif isinstance(spec, Sequence) and not _checks._is_integer(spec):
      names = tuple(spec)
      bad = [n for n in names if not isinstance(n, str) or not n]
      if not names or bad:
        raise TypeError(
            "`num_losses` as names must be a non-empty sequence of non-empty "
            f"strings, got {spec!r}."
        )
      if len(set(names)) != len(names):
        raise ValueError(f"`num_losses` names must be unique, got {names!r}.")
      self.kind = "names"
      self.names = names
      self.num_losses = len(names)
    else:
      self.kind = "vector"
      self.num_losses = _checks.check_int("num_losses", spec, minimum=1)
      self.names = tuple(str(k) for k in range(self.num_losses))

  def describe(self) -> str:
    if self.kind == "vector":
      return f"a [{self.num_losses}] loss vector"
    if self.kind == "names":
      return f"a mapping of the named losses {list(self.names)}"
    return f"a pytree of {self.num_losses} scalar losses with structure {self.treedef}"

  def flatten(self, losses: Any, name: str = "losses") -> jax.Array:
    """The ``[K]`` vector of ``losses`` given in this structure (trace time)."""
    if self.kind == "vector":
      if isinstance(losses, Mapping):
        keys = sorted(map(str, losses))
        raise ValueError(
            f"`{name}` is a mapping with keys {keys}, but this rule was built "
            f"for {self.describe()}: build it from the names instead, e.g. "
            f"softadapt_jax.softadapt({keys!r})."
        )
      vector = jnp.asarray(losses)
      if vector.shape != (self.num_losses,):
        raise ValueError(
            f"`{name}` must have shape ({self.num_losses},) to match the rule's "
            f"num_losses={self.num_losses}, got shape {vector.shape}."
        )
      _checks.check_floating(name, vector)
      return vector
    if self.kind == "names":
      if not isinstance(losses, Mapping) or set(losses) != set(self.names):
        got = (
            f"a mapping with keys {sorted(map(str, losses))}"
            if isinstance(losses, Mapping)
            else f"{type(losses).__name__} of shape {np.shape(losses)}"
        )
        raise ValueError(
            f"`{name}` must be {self.describe()}, got {got}: the structure of "
            "the losses may not change between steps."
        )
      leaves = [losses[n] for n in self.names]
    else:
      leaves, treedef = jax.tree.flatten(losses)
      if treedef != self.treedef:
        raise ValueError(
            f"`{name}` must have the structure {self.treedef}, got {treedef}: "
            "the structure of the losses may not change between steps."
        )
    return jnp.stack(self._cast_leaves(leaves, name))

  def components(self, losses: Any, name: str = "losses") -> list[jax.Array]:
    """The ``K`` scalar losses of ``losses``, each taken before any stacking.

    Differentiating component ``k`` of this list differentiates only the
    computation of loss ``k``: the other losses' computations are dead code
    (for a ``[K]`` array the user stacked, every component depends on the
    stack, and its gradient runs back through all of them with zeros).
    Named losses (a rule built from names or a structure) keep them apart.
    """
    vector = self.flatten(losses, name)  # checks the structure
    if self.kind == "vector":
      return [vector[k] for k in range(self.num_losses)]
    leaves = (
        [losses[n] for n in self.names] if self.kind == "names"
        else jax.tree.leaves(losses)
    )
    return self._cast_leaves(leaves, name)  # the stack above is dead code

  def _cast_leaves(self, leaves: list[Any], name: str) -> list[jax.Array]:
    for n, leaf in zip(self.names, leaves, strict=True):
      if np.shape(leaf) != ():
        raise ValueError(
            f"`{name}`[{n!r}] must be a scalar loss, got shape {np.shape(leaf)}."
        )
      _checks.check_floating(f"{name}[{n!r}]", leaf)
    dtype = _widest_float([jnp.result_type(leaf) for leaf in leaves])
    return [jnp.asarray(leaf).astype(dtype) for leaf in leaves]

  def unflatten(self, vector: jax.Array) -> Any:
    """``vector`` (``[K]``, or ``[..., K]``) in this structure."""
    if self.kind == "vector":
      return vector
    parts = [vector[..., k] for k in range(self.num_losses)]
    if self.kind == "names":
      return dict(zip(self.names, parts, strict=True))
    assert self.treedef is not None
    return jax.tree.unflatten(self.treedef, parts)

  def like(self, vector: jax.Array, losses: Any) -> Any:
    """``vector`` in the structure of ``losses``, each leaf in its dtype."""
    if self.kind == "vector":
      return vector.astype(jnp.result_type(losses))
    structured = self.unflatten(vector)
    if self.kind == "names":
      return {n: structured[n].astype(jnp.result_type(losses[n])) for n in losses}
    return jax.tree.map(
        lambda w, leaf: w.astype(jnp.result_type(leaf)), structured, losses
    )


def _widest_float(dtypes: Sequence[Any]) -> jnp.dtype:
  """The widest of ``dtypes`` without promotion (fine under strict promotion)."""
  return max((jnp.dtype(d) for d in dtypes), key=lambda d: d.itemsize)


def widest_float_leaf_dtype(tree: Any) -> jnp.dtype | None:
  """The widest floating dtype among the leaves of ``tree``, or ``None``.

  Integer, boolean and PRNG-key leaves are ignored, and no dtype promotion is
  asked of JAX, so this works under ``jax.numpy_dtype_promotion("strict")``.
  """
  floats = []
  for leaf in jax.tree.leaves(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.floating):
      floats.append(jnp.dtype(dtype))
  return _widest_float(floats) if floats else None


def is_float_leaf(leaf: ArrayLike) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)
