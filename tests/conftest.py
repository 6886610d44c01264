"""Test configuration: the oracle runs on the JAX backend of Keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
