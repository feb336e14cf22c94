"""The documentation says what the code does: generated tables match the schemas, referenced images exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pipeline.schema import with_tables

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_doc_tables_match_the_schema():
    doc = (ROOT / "docs" / "pipeline.md").read_text()
    assert with_tables(doc) == doc, "docs/pipeline.md's tables differ from pipeline/schema.py: run `python -m pipeline.schema --update docs/pipeline.md`"


def test_images_the_docs_show_are_in_git():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+\.(?:png|jpg|svg))\)", page.read_text()):
            path = (page.parent / target).resolve().relative_to(ROOT).as_posix()
            assert path in tracked, f"{page.relative_to(ROOT)} shows {target}, which git does not track"


def test_make_bench_runs_every_benchmark():
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert f"benchmarks/{script.name}" in recipe, f"`make bench` leaves out benchmarks/{script.name} (docs/benchmarks.md says it runs them all)"
