"""The documentation a user reads and runs: the MkDocs site builds in strict mode (every page, link and
API-reference entry resolves), and the tutorial notebook executes cell by cell."""

import doctest
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["fond.config", "fond.device", "fond.encode", "fond.residual_basis"])
def test_docstring_examples_print_what_they_show(module):
    """The modules' docstring examples (doctest) are what the code returns: a changed default shows up here."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_the_docs_site_builds_strictly(tmp_path):
    """A broken link, a missing page or a docstring mkdocstrings cannot read fails the build."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None, "mkdocs is not installed (requirements.lock: the docs packages)"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("fond.encode") > 0
    assert (tmp_path / "site" / "tutorial.ipynb").is_file()


def test_the_readme_points_to_every_docs_page():
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    readme = (ROOT / "README.md").read_text()
    assert [p for p in pages if f"(docs/{p})" not in readme] == []


@pytest.mark.slow
def test_the_tutorial_notebook_executes(tmp_path):
    """Every code cell, in order, in one fresh interpreter: a tutorial that no longer runs fails CI."""
    notebook = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text())
    cells = [cell["source"] for cell in notebook["cells"] if cell["cell_type"] == "code"]
    source = "\n\n".join("".join(c) if isinstance(c, list) else c for c in cells)
    assert "%" not in "".join(line[:1] for line in source.splitlines())  # plain Python: no magics
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", source], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Spearman ρ of latency with contrast" in done.stdout and "on a new photo" in done.stdout
    assert (tmp_path / "tutorial_raster.png").is_file() and (tmp_path / "tutorial_atoms.png").is_file()
