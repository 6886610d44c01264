"""Griffe extension: renders the package's docstring style in the docs site.

The docstrings follow Google style with a few reStructuredText habits (optax
style). Before mkdocstrings parses them as Google-style Markdown, this
rewrites, in the rendered copy only:

- an ``Example:`` section header to ``Examples:`` (so the doctest becomes a
  code example, not an admonition);
- grouped argument entries ``a, b, c: description`` to one entry per name;
- ``.. math::`` blocks to ``$$ ... $$`` (rendered by KaTeX);
- ``:func:`name``` and ``:class:`name``` roles to links to the API
  reference when ``name`` is public, else to code;
- reStructuredText simple tables (``===`` borders) to Markdown tables;

and gives exported module attributes without a docstring one (an alias's
target, or the attribute's source), so that every name in ``__all__`` is
listed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod):`~?([\w.]+)`")
_GROUPED = re.compile(r"^( +)(\w+(?:,\s*\w+)+),?\s*:(.*)$")
_BORDER = re.compile(r"^( *)(=+(?: +=+)+) *$")


class HouseStyle(griffe.Extension):
  """Normalises every docstring of a package once it is loaded."""

  def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
    del kwargs
    public = {str(name) for name in (pkg.exports or ())}
    role = functools.partial(_role, package=pkg.name, public=public)
    for obj in _walk(pkg):
      if obj.docstring is None:
        continue
      text = obj.docstring.value
      text = _EXAMPLE.sub(r"\1Examples:", text)
      text = _math_blocks(text)
      text = _tables(text)
      text = _grouped_args(text)
      text = _ROLE.sub(role, text)
      obj.docstring.value = text
    _document_exported_attributes(pkg, public)


def _document_exported_attributes(pkg: griffe.Module, public: set[str]) -> None:
  """Gives exported module attributes without a docstring one (else hidden)."""
  for name in sorted(public):
    if name not in pkg.members:
      continue
    member = pkg.members[name]
    target = member.final_target if isinstance(member, griffe.Alias) else member
    if not isinstance(target, griffe.Attribute) or target.docstring is not None:
      continue
    value = str(target.value)
    if value in public:
      text = f"Alias of [`{value}`][{pkg.name}.{value}]."
    else:
      parent = target.parent.path if target.parent is not None else pkg.path
      text = f"Defined in `{parent}`:\n\n```python\n{target.source}\n```"
    target.docstring = griffe.Docstring(text, parent=target)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
  yield obj
  for member in obj.members.values():
    if isinstance(member, griffe.Object):  # not an alias
      yield from _walk(member)


def _role(match: re.Match[str], *, package: str, public: set[str]) -> str:
  name = match.group(1)
  short = name.rsplit(".", 1)[-1]
  local = name == short or name.startswith(f"{package}.")
  if local and short in public:
    return f"[`{short}`][{package}.{short}]"
  return f"`{name}`"


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    line = lines[i]
    if line.strip() == ".. math::":
      base = _indent(line)
      body, i = [], i + 1
      while i < len(lines) and (
          not lines[i].strip() or _indent(lines[i]) > base
      ):
        body.append(lines[i].strip())
        i += 1
      while body and not body[-1]:
        body.pop()
      pad = " " * base
      out += [f"{pad}$$", *(f"{pad}{b}" for b in body if b), f"{pad}$$", ""]
      continue
    out.append(line)
    i += 1
  return "\n".join(out)


def _tables(text: str) -> str:
  lines, out, i = text.splitlines(), [], 0
  while i < len(lines):
    match = _BORDER.match(lines[i])
    if not match:
      out.append(lines[i])
      i += 1
      continue
    border = lines[i]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    rows, i, borders = [], i + 1, 1
    while i < len(lines) and borders < 3:
      if _BORDER.match(lines[i]):
        borders += 1
      elif lines[i].strip():
        cells = []
        for j, (start, _) in enumerate(spans):
          stop = spans[j + 1][0] if j + 1 < len(spans) else len(lines[i])
          cells.append(lines[i][start:stop].strip())
        rows.append(cells)
      i += 1
    pad = match.group(1)
    out.append("")
    for r, cells in enumerate(rows):
      out.append(pad + "| " + " | ".join(cells) + " |")
      if r == 0:
        out.append(pad + "|" + "---|" * len(cells))
    out.append("")
  return "\n".join(out)


def _grouped_args(text: str) -> str:
  lines, out, i = text.splitlines(), [], 0
  args_indent = None  # the indent of the "Args:" header we are under
  while i < len(lines):
    line = lines[i]
    if re.match(r"^\s*(Args|Arguments|Parameters):\s*$", line):
      args_indent = _indent(line)
    elif line.strip() and args_indent is not None and (
        _indent(line) <= args_indent
    ):
      args_indent = None
    if args_indent is None:
      out.append(line)
      i += 1
      continue
    # A grouped entry may wrap: "a, b, c,\n    d: description".
    joined, j = line, i
    while (
        re.match(r"^ +\w+(?:,\s*\w+)*,\s*$", joined)
        and j + 1 < len(lines)
        and _indent(lines[j + 1]) > _indent(line)
    ):
      j += 1
      joined = joined.rstrip() + " " + lines[j].strip()
    match = _GROUPED.match(joined)
    if not match:
      out.append(line)
      i += 1
      continue
    indent, names, first = match.groups()
    continuation, j = [], j + 1
    while j < len(lines) and lines[j].strip() and _indent(lines[j]) > len(indent):
      continuation.append(lines[j])
      j += 1
    for name in re.split(r",\s*", names):
      out.append(f"{indent}{name}:{first}")
      out.extend(continuation)
    i = j
  return "\n".join(out)
