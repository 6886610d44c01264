"""The documentation site builds, and its runnable examples run.

- ``mkdocs build --strict`` renders every page and the API reference from the
  docstrings (``mkdocs.yml``; a broken link, a missing page in the nav or an
  unresolved cross-reference fails the build). Needs the ``docs`` extra.
- Every ``pycon`` fenced block (``>>>`` lines with their expected output) of
  the pages listed below runs as a doctest, one namespace per page.
"""

from __future__ import annotations

import doctest
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Pages whose ``pycon`` blocks are self-contained examples.
PAGES_WITH_EXAMPLES = (
    "index.md",
    "maths.md",
    "caveats.md",
    "integrations/sweeps.md",
    "integrations/logging.md",
)
_PYCON = re.compile(r"^```pycon[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _mkdocs() -> list[str] | None:
  try:
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401
  except ImportError:
    return None
  return [sys.executable, "-m", "mkdocs"]


def test_mkdocs_build_strict(tmp_path):
  command = _mkdocs()
  if command is None:
    pytest.skip("the docs extra (mkdocs-material, mkdocstrings) is not installed")
  site = tmp_path / "site"
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), env.get("PYTHONPATH")) if p
  )
  result = subprocess.run(
      [*command, "build", "--strict", "--site-dir", str(site)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  api = (site / "api" / "index.html").read_text()
  # The reference lists every public name, each with its own anchor.
  import softadapt_jax

  anchors = set(re.findall(r'id="(softadapt_jax\.[\w.]+)"', api))
  missing = [n for n in softadapt_jax.__all__ if f"softadapt_jax.{n}" not in anchors]
  assert not missing, missing
  assert "softadapt_jax.plotting.plot_training" in anchors
  # Docstring examples render as code, not as Markdown text.
  assert api.count('<span class="gp">&gt;&gt;&gt; </span>') > 50
  for page in PAGES_WITH_EXAMPLES:
    built = site / page.replace(".md", "") / "index.html"
    if page == "index.md":
      built = site / "index.html"
    assert built.exists(), page
  shutil.rmtree(site)


def _examples(page: str) -> list[tuple[str, int]]:
  """The page's ``pycon`` blocks with the line number each starts at."""
  text = (DOCS / page).read_text()
  return [
      (match.group(1), text.count("\n", 0, match.start(1)))
      for match in _PYCON.finditer(text)
  ]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES)
def test_page_examples_run(page):
  blocks = _examples(page)
  if not blocks:
    pytest.skip(f"{page} has no pycon examples")
  parser = doctest.DocTestParser()
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  )
  globs: dict = {}  # one namespace per page, as in a session
  report: list[str] = []
  for source, lineno in blocks:
    test = parser.get_doctest(source, globs, page, str(DOCS / page), lineno)
    runner.run(test, out=report.append, clear_globs=False)
    globs = test.globs  # DocTest copies its globals: carry them on
  assert runner.failures == 0, "".join(report)
  assert runner.tries > 0
