"""The digits data (scikit-learn's ``load_digits``, shipped with the package) and a
small MLP, shared by the autoencoder and VAE studies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def load(test_size: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
  """1797 8x8 digits scaled to ``[0, 1]``, a stratified train/test split."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  data, target = load_digits(return_X_y=True)
  x = (np.asarray(data) / 16.0).astype(np.float32)
  target = np.asarray(target)
  x_tr, x_te, y_tr, y_te = train_test_split(
      x, target, test_size=test_size, random_state=seed, stratify=target,
  )
  return {"x_train": np.asarray(x_tr), "y_train": np.asarray(y_tr),
          "x_test": np.asarray(x_te), "y_test": np.asarray(y_te)}


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  """Glorot-normal weights, zero biases."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {
          "w": math.sqrt(2.0 / (a + b)) * jax.random.normal(k, (a, b)),
          "b": jnp.zeros((b,)),
      }
      for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp(params: Any, x: jax.Array, act=jax.nn.relu) -> jax.Array:
  """Hidden layers with ``act``, a linear last layer."""
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def logistic_accuracy(
    codes_train: np.ndarray,
    y_train: np.ndarray,
    codes_test: np.ndarray,
    y_test: np.ndarray,
    max_iter: int = 500,
) -> float:
  """Test accuracy of scikit-learn's logistic regression on standardised codes."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  codes_train = np.nan_to_num(np.asarray(codes_train, np.float64))
  codes_test = np.nan_to_num(np.asarray(codes_test, np.float64))
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
  clf.fit(codes_train, y_train)
  return float(clf.score(codes_test, y_test))
