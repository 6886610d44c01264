"""MkDocs hooks: the studies' figures are part of the site without a copy in git.

``examples/studies/results/**/*.png`` are written by the studies themselves;
this adds each to the site as ``assets/studies/<path_with_underscores>.png``
at build time, so
``docs/studies.md`` embeds them with ``![...](assets/studies/<name>.png)`` and
``mkdocs build --strict`` checks those links like any other.
"""

from __future__ import annotations

import pathlib
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUDY_RESULTS = ROOT / "examples" / "studies" / "results"
SITE_FOLDER = "assets/studies"


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
  del kwargs
  for png in sorted(STUDY_RESULTS.rglob("*.png")):
    # results/a.png -> a.png; results/converged/helmholtz.png ->
    # converged_helmholtz.png
    name = "_".join(png.relative_to(STUDY_RESULTS).parts)
    files.append(
        File.generated(config, f"{SITE_FOLDER}/{name}", abs_src_path=str(png))
    )
  return files
