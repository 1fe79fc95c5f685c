"""The shape of the code: the architecture picture names every module, and no modules import each other in a
circle (the layer contract of pyproject.toml, which `make test` checks with lint-imports, allows one inside a
layer)."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import transferlab

ROOT = Path(transferlab.__file__).parent
DOT = Path(__file__).parents[1] / "docs" / "architecture.dot"


def test_the_architecture_picture_names_every_module():
    """docs/architecture.dot drew pipeline.py, cv.py, strategies/auto.py and a FitJob long after they were
    gone, and lacked rundir, search/, rank, preview and typecheck."""
    text = "\n".join(line for line in DOT.read_text().splitlines() if not line.lstrip().startswith("//"))
    text = text.replace("\\n", " ")  # the labels' line breaks
    modules = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py"))
    missing = [m for m in modules if not re.search(rf"(?<![\w/.]){re.escape(m)}", text)]
    assert not missing, f"add these modules to {DOT.name}: {missing}"
    named = set(re.findall(r"(?<![\w/.])((?:\w+/)*\w+\.py)", text))
    gone = sorted(named - set(modules))
    assert not gone, f"{DOT.name} draws modules that no longer exist: {gone}"


def test_no_modules_import_each_other_in_a_circle():
    """data/builtins.py and data/sources.py imported each other (imports inside functions count)."""
    graph = grimp.build_graph("transferlab")
    circles = sorted({tuple(sorted((importer, imported))) for importer in graph.modules
                      for imported in graph.find_modules_directly_imported_by(importer)
                      if graph.chain_exists(imported=importer, importer=imported)})
    assert not circles, circles
