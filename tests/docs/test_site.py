"""The documentation: the site builds with no warnings (mkdocs --strict: broken links and anchors, API pages
from docstrings), the README stays short, and every page holds the generated tables as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_without_warnings(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Recommender" in api and "doc-class" in api  # rendered from the docstrings


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
