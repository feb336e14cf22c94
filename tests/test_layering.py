"""One direction of dependency (README, "Where things are"): jobs -> pipeline -> shapes -> flashvlm, read from the source (experiments and
benchmarks may use any of them; tests everything but jobs).

Every import of every module is read with `ast` (top-level and inside functions, `import x`, `from x import y`,
relative imports, and `importlib.import_module("x")` with a literal name), so a lazy import cannot hide.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("flashvlm", "pipeline", "shapes", "jobs", "benchmarks", "experiments", "tests")
STAGES = ("pipeline.listing", "pipeline.decode", "pipeline.answer", "pipeline.write")  # the stages of docs/pipeline.md


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def called(call: ast.Call) -> str | None:
    """The name a call calls: `f` for f(...) and a.b.f(...)."""
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module name `path` imports, anywhere in it (for `from a import b`: a and a.b)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and called(node) in ("import_module", "__import__") and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = {module_name(p): imports_of(p) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}

# (importer, what it must not import, why)
RULES = [
    ("flashvlm", "pipeline", "the library never imports the pipeline"),
    ("flashvlm", "jobs", "the library never imports a job"),
    *(("flashvlm", lib, "the library knows nothing of Ray, storage or tables") for lib in ("ray", "fsspec", "s3fs", "pyarrow")),
    ("flashvlm", "shapes", "the library knows no task: a task's checkpoint reaches flashvlm.load through an entry point"),
    ("pipeline", "jobs", "the pipeline never imports a job"),
    ("pipeline", "experiments", "the pipeline never imports an experiment"),
    ("shapes", "pipeline", "the shapes task uses the library, never the pipeline (a job passes it the pipeline's scorer)"),
    ("shapes", "jobs", "the shapes task never imports a job"),
    ("shapes", "benchmarks", "the shapes task never imports a benchmark"),
    ("tests", "jobs", "tests import pipeline/ (running the script as a subprocess is fine)"),
    ("benchmarks", "jobs", "benchmarks import pipeline/"),
    ("benchmarks", "experiments", "benchmarks measure the product, not experiments"),
    ("experiments", "jobs", "experiments import the library, not jobs"),
]


def test_every_layer_has_modules():
    for layer in LAYERS:
        assert any(within(m, layer) for m in MODULES), f"no modules found under {layer}/"
    assert "pipeline.run" in MODULES and "jobs.video_qa" in MODULES


@pytest.mark.parametrize("importer, forbidden, why", RULES)
def test_no_import_points_up(importer, forbidden, why):
    wrong = sorted(f"{m} imports {name}" for m, names in MODULES.items() if within(m, importer)
                   for name in names if within(name, forbidden))
    assert not wrong, f"{why}: " + "; ".join(wrong)


def test_no_stage_imports_another_stage():
    wrong = sorted(f"{stage} imports {name}" for stage in STAGES for name in MODULES[stage]
                   if any(within(name, other) for other in STAGES if other != stage))
    assert not wrong, "stages are independent (shared code lives in schema, storage, commit, ...): " + "; ".join(wrong)


def test_no_private_name_is_imported_across_modules():
    # A leading underscore means "this module's own": the product's modules import each other's public names
    # only (a test may still test a private helper of the module it tests).
    wrong = []
    for layer in (l for l in LAYERS if l != "tests"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and any(within(node.module or "", l) for l in LAYERS):
                    wrong += [f"{module_name(path)} imports {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "import a public name (or make the name public where it is defined): " + "; ".join(wrong)


def test_tests_and_benchmarks_load_no_script_as_a_module():
    # what an import statement would not show: importlib's spec_from_file_location or runpy on a script
    loaders = ("spec_from_file_location", "run_path", "run_module")
    wrong = []
    for layer in ("tests", "benchmarks", "experiments"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and called(node) in loaders:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, "import pipeline/ instead, or run the script as a subprocess: " + ", ".join(wrong)


def test_the_checker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    package = tmp_path / "flashvlm" / "models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source = package / "x.py"
    source.write_text(
        "import os\n"
        "def f():\n    from pipeline.decode import DecodeVideos\n"
        "from ..selection import select_tokens\n"
        "from . import base\n"
        "import importlib\nimportlib.import_module('jobs.video_qa')\n"
    )
    assert imports_of(source, tmp_path) >= {"os", "pipeline.decode", "flashvlm.selection", "flashvlm.models.base", "jobs.video_qa"}
