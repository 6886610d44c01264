"""The documentation site builds, works offline, and its runnable examples run.

- ``mkdocs build --strict`` renders every page and the API reference from the
  docstrings (``mkdocs.yml``; a broken link or anchor, a page missing from the
  nav or an unresolved cross-reference fails the build). Needs the ``docs``
  extra. The API reference has an anchor for every name in ``__all__``.
- The built site makes no external request: no script, style sheet, font or
  image from another host (KaTeX is vendored in ``docs/assets/katex``).
- The copy buttons of ``pycon`` blocks copy the code without the ``>>>`` /
  ``...`` prompts and without the output lines (``docs/javascripts/pycon_copy.js``);
  with Node.js installed, its function is run on every block and must give the
  code doctest runs.
- The studies' figures are in the site (``docs/_ext/hooks.py``).
- No page but the changelog names an entry point removed in 0.2.0.
- Every ``pycon`` fenced block (``>>>`` lines with their expected output) of
  every page runs as a doctest, one namespace per page.
"""

from __future__ import annotations

import doctest
import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import softadapt_jax
import softadapt_jax.plotting

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
STUDY_RESULTS = ROOT / "examples" / "studies" / "results"
COPY_JS = DOCS / "javascripts" / "pycon_copy.js"
_PYCON = re.compile(r"^```pycon[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# The entry points removed in 0.2.0 (the changelog lists them; no other page
# may teach them).
REMOVED = sorted(
    {
        "softadapt_track",
        "softadapt_value_and_grad",
        "softadapt_combine_grads",
        "find_softadapt_state",
        "softadapt_diagnostics",
        "SoftAdaptGrad",
        "SoftAdaptDiagnostics",
    }
    | set(getattr(softadapt_jax, "_REMOVED", {}))
)


def _pages() -> list[str]:
  return sorted(
      str(p.relative_to(DOCS))
      for p in DOCS.rglob("*.md")
      if "_ext" not in p.relative_to(DOCS).parts
  )


# Pages whose ``pycon`` blocks are self-contained examples: every page that
# has one.
PAGES_WITH_EXAMPLES = tuple(
    page for page in _pages() if _PYCON.search((DOCS / page).read_text())
)


def _built(site: pathlib.Path, page: str) -> pathlib.Path:
  if page == "index.md":
    return site / "index.html"
  return site / page.removesuffix(".md") / "index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  try:
    import mkdocs  # noqa: F401
    import mkdocstrings  # noqa: F401
  except ImportError:
    pytest.skip("the docs extra (mkdocs-material, mkdocstrings) is not installed")
  site = tmp_path_factory.mktemp("docs") / "site"
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(ROOT), env.get("PYTHONPATH")) if p
  )
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  yield site
  shutil.rmtree(site)


def test_mkdocs_build_strict(site):
  api = (site / "api" / "index.html").read_text()
  # The reference lists every public name, each with its own anchor, and none
  # of the removed ones.
  anchors = set(re.findall(r'id="(softadapt_jax\.[\w.]+)"', api))
  missing = [
      n for n in softadapt_jax.__all__ if f"softadapt_jax.{n}" not in anchors
  ]
  assert not missing, missing
  for name in softadapt_jax.plotting.__all__:
    assert f"softadapt_jax.plotting.{name}" in anchors, name
  assert not [n for n in REMOVED if f"softadapt_jax.{n}" in anchors]
  # Docstring examples render as code, not as Markdown text.
  assert api.count('<span class="gp">&gt;&gt;&gt; </span>') > 50
  for page in _pages():
    assert _built(site, page).exists(), page


# Tags whose attribute loads something into the page (a link to another site
# with <a href> is fine; fetching from it is not).
_LOADS = re.compile(
    r"<(script|link|img|iframe|source|embed|object|audio|video|track|input)\b"
    r"[^>]*?\b(src|href|data|srcset|poster)\s*=\s*[\"']?\s*((?:https?:)?//[^\"'\s>]+)",
    re.IGNORECASE,
)
_CSS_EXTERNAL = re.compile(
    r"(?:url\(\s*[\"']?\s*(?:https?:)?//|@import\s+[\"']?\s*(?:https?:)?//)",
    re.IGNORECASE,
)


def test_site_makes_no_external_request(site):
  pages = sorted(site.rglob("*.html"))
  assert pages
  external = []
  for path in pages:
    text = path.read_text()
    external += [
        f"{path.relative_to(site)}: {m.group(0)}" for m in _LOADS.finditer(text)
    ]
    external += [
        f"{path.relative_to(site)}: inline style {m.group(0)}"
        for m in _CSS_EXTERNAL.finditer(text)
    ]
  for path in sorted(site.rglob("*.css")):
    external += [
        f"{path.relative_to(site)}: {m.group(0)}"
        for m in _CSS_EXTERNAL.finditer(path.read_text())
    ]
  assert not external, "\n".join(external[:20])
  # The maths is rendered by the vendored KaTeX, on every page, and every
  # font its style sheet names is in the site.
  katex = site / "assets" / "katex"
  for name in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js"):
    assert (katex / name).is_file(), name
  for path in pages:
    if path.name != "index.html" or "assets" in path.relative_to(site).parts:
      continue
    text = path.read_text()
    for name in (
        "katex.min.js", "katex.min.css", "auto-render.min.js", "javascripts/katex.js"
    ):
      assert name in text, (path, name)
  fonts = set(re.findall(r"url\(([^)]+)\)", (katex / "katex.min.css").read_text()))
  assert fonts
  assert all((katex / f.strip("\"'")).is_file() for f in fonts), fonts
  # pymdownx.arithmatex (generic mode) wrapped the formulas for KaTeX.
  maths = (site / "maths" / "index.html").read_text()
  assert maths.count('class="arithmatex"') > 20


def test_katex_renders_every_formula(site):
  """Every formula of the site is valid KaTeX (run by Node.js on the vendored copy)."""
  formulas = []
  for path in sorted(site.rglob("*.html")):
    for _, body in re.findall(
        r'<(span|div) class="arithmatex">(.*?)</\1>', path.read_text(), re.S
    ):
      formulas.append([str(path.relative_to(site)), html.unescape(body)])
  assert len(formulas) > 100
  api = [f for f in formulas if f[0] == "api/index.html"]
  assert len(api) > 5  # the docstrings' ``.. math::`` blocks
  node = shutil.which("node")
  if node is None:
    pytest.skip("Node.js is not installed: the formulas are not rendered")
  katex = site / "assets" / "katex" / "katex.min.js"
  program = (
      f"const katex = require({json.dumps(str(katex))});"
      "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
      "const bad = [];"
      "for (const [page, body] of cases) {"
      "  const inline = body.match(/^\\\\\\(([\\s\\S]*)\\\\\\)$/);"
      "  const display = body.match(/^\\\\\\[([\\s\\S]*)\\\\\\]$/);"
      "  const tex = inline || display;"
      "  if (!tex) { bad.push([page, 'not wrapped', body]); continue; }"
      "  try { katex.renderToString("
      "    tex[1], {throwOnError: true, displayMode: !!display}); }"
      "  catch (e) { bad.push([page, e.message, body]); }"
      "}"
      "process.stdout.write(JSON.stringify(bad));"
  )
  result = subprocess.run(
      [node, "-e", program], input=json.dumps(formulas), capture_output=True,
      text=True, timeout=120, check=True,
  )
  assert json.loads(result.stdout) == []


def _pycon_blocks_in_html(text: str, *, console_class: bool) -> list[str]:
  """The text of each console code block of a built page."""
  if console_class:
    pattern = (
        r'<div class="language-pycon highlight"[^>]*>'
        r"<pre[^>]*>(?:<span></span>)?<code[^>]*>(.*?)</code>"
    )
  else:
    pattern = r"<pre[^>]*>(?:<span></span>)?<code[^>]*>(.*?)</code>"
  blocks = [
      html.unescape(re.sub(r"<[^>]+>", "", b))
      for b in re.findall(pattern, text, re.S)
  ]
  return [b for b in blocks if b.lstrip().startswith(">>>")]


def _doctest_source(text: str) -> str:
  """The code doctest runs for a console session, prompts and output left out."""
  examples = doctest.DocTestParser().get_examples(text)
  return "".join(e.source for e in examples).rstrip()


def test_copy_buttons_copy_code_without_prompts_or_output(site):
  config = (ROOT / "mkdocs.yml").read_text()
  assert "content.code.copy" in config
  assert "pygments_lang_class: true" in config
  script = (site / "javascripts" / "pycon_copy.js").read_text()
  # mkdocs-material copies the `data-copy` attribute of the code element when
  # it has one; the script sets it on the console blocks.
  assert "language-pycon" in script
  assert "data-copy" in script
  for page in (*PAGES_WITH_EXAMPLES, "api.md"):
    assert "javascripts/pycon_copy.js" in _built(site, page).read_text(), page
  # The built console blocks carry the class the script looks for, and their
  # text is the page's block.
  html_blocks = {
      page: _pycon_blocks_in_html(_built(site, page).read_text(), console_class=True)
      for page in PAGES_WITH_EXAMPLES
  }
  for page in PAGES_WITH_EXAMPLES:
    source = [m.group(1) for m in _PYCON.finditer((DOCS / page).read_text())]
    assert [b.rstrip("\n") for b in html_blocks[page]] == [
        s.rstrip("\n") for s in source
    ], page
  api_blocks = _pycon_blocks_in_html(
      (site / "api" / "index.html").read_text(), console_class=False
  )
  assert len(api_blocks) > 20
  node = shutil.which("node")
  if node is None:
    pytest.skip("Node.js is not installed: the copied text is not checked")
  cases = [b for blocks in html_blocks.values() for b in blocks] + api_blocks
  program = (
      f"const {{pyconSource}} = require({json.dumps(str(COPY_JS))});"
      "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
      "process.stdout.write(JSON.stringify(cases.map(pyconSource)));"
  )
  result = subprocess.run(
      [node, "-e", program], input=json.dumps(cases), capture_output=True,
      text=True, timeout=60, check=True,
  )
  copied = json.loads(result.stdout)
  for case, text in zip(cases, copied, strict=True):
    assert text == _doctest_source(case), case
    assert ">>>" not in text
  # Text without prompts is copied as it is.
  result = subprocess.run(
      [node, "-e", program], input=json.dumps(["x = 1\nprint(x)\n"]),
      capture_output=True, text=True, timeout=60, check=True,
  )
  assert json.loads(result.stdout) == ["x = 1\nprint(x)\n"]


def test_studies_figures_are_in_the_site(site):
  figures = {
      "_".join(p.relative_to(STUDY_RESULTS).parts): p
      for p in STUDY_RESULTS.rglob("*.png")
  }
  assert figures
  studies = (site / "studies" / "index.html").read_text()
  shown = re.findall(r'<img[^>]*src="\.\./assets/studies/([\w.-]+\.png)"', studies)
  assert sorted(shown) == sorted(figures)
  for name, path in figures.items():
    assert (site / "assets" / "studies" / name).read_bytes() == path.read_bytes()
  # Built at build time, not copied into docs/.
  assert not list(DOCS.rglob("*.png"))


def test_no_page_teaches_a_removed_name():
  pattern = re.compile(r"\b(" + "|".join(map(re.escape, REMOVED)) + r")\b")
  offenders = []
  for page in [*(DOCS / p for p in _pages()), ROOT / "README.md"]:
    if page == DOCS / "changelog.md":
      continue
    for lineno, line in enumerate(page.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{page.relative_to(ROOT)}:{lineno}: {line.strip()}")
  assert not offenders, "\n".join(offenders)
  # The changelog names each removed name, with its replacement.
  changelog = (DOCS / "changelog.md").read_text()
  for name in REMOVED:
    assert re.search(rf"^\| `sa\.{name}\b[^|]*\| .+\|$", changelog, re.M), name


def _examples(page: str) -> list[tuple[str, int]]:
  """The page's ``pycon`` blocks with the line number each starts at."""
  text = (DOCS / page).read_text()
  return [
      (match.group(1), text.count("\n", 0, match.start(1)))
      for match in _PYCON.finditer(text)
  ]


def test_the_main_pages_have_examples():
  for page in ("index.md", "maths.md", "caveats.md", "integrations/sweeps.md",
               "integrations/logging.md"):
    assert page in PAGES_WITH_EXAMPLES, page


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES)
def test_page_examples_run(page):
  blocks = _examples(page)
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
