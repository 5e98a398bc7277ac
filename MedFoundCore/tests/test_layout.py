"""The package layout of ARCHITECTURE.md, checked by parsing the source (nothing is imported).

- Inference and training do not import each other: what both need (preprocessing, model loading,
  label -> structure mapping) lives below both (``preprocess``, ``vocabulary``, ``models``).
- ``models/backbones/`` is the one home of every image encoder: no module outside it defines a
  class of the same name as an encoder class defined there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medfoundcore

PACKAGE = Path(medfoundcore.__file__).resolve().parent
BACKBONES = PACKAGE / "models" / "backbones"
#: Encoders that must live in backbones/ (guards against the check below going vacuous).
EXPECTED_ENCODERS = {"CTFoundationEncoder", "DualBranchEncoder3D", "MaskedAutoencoder3D", "ImageEncoder", "FPN"}


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = ["medfoundcore", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (function-local imports too)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            # "from .. import train" imports a subpackage by name
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _reaches(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def _violations(source: str, target: str) -> list[str]:
    out = []
    for path in _modules(PACKAGE / source):
        for module in _reaches(imported_modules(path), f"medfoundcore.{target}"):
            out.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return out


def test_inference_does_not_import_train():
    assert _violations("inference", "train") == []


def test_train_does_not_import_inference():
    assert _violations("train", "inference") == []


def test_import_parser_sees_relative_and_local_imports():
    """The checker itself: relative, parent-relative and function-local imports all resolve."""
    probe = PACKAGE / "inference" / "click.py"
    modules = imported_modules(probe)
    assert "medfoundcore.preprocess" in modules  # from ..preprocess import ...
    assert "medfoundcore.models.backbones.encoder3d" in modules  # local import inside a function


def _classes(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def _encoder_classes() -> set[str]:
    """Classes in backbones/ named as encoders (…Encoder…, …encoder…, FPN)."""
    names: set[str] = set()
    for path in _modules(BACKBONES):
        names.update(n for n in _classes(path) if "encoder" in n.lower() or n == "FPN")
    return names


def test_backbones_hold_every_encoder():
    encoders = _encoder_classes()
    assert EXPECTED_ENCODERS <= encoders, f"missing from models/backbones/: {sorted(EXPECTED_ENCODERS - encoders)}"
    elsewhere = [
        f"{path.relative_to(PACKAGE)} defines {name}"
        for path in _modules(PACKAGE)
        if BACKBONES not in path.parents
        for name in sorted(_classes(path) & encoders)
    ]
    assert elsewhere == []



def _python39_violations(*paths: Path) -> str:
    """vermin's report of what in ``paths`` needs a Python newer than 3.9 ('' when nothing does)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "--eval-annotations", "-t=3.9-", *map(str, paths)],
        capture_output=True, text=True,
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_core_and_extension_source_runs_on_slicer_58_python_39(tmp_path):
    """Slicer 5.8 ships Python 3.9: no 3.10+ syntax or API (``zip(strict=)``, ``int | float`` at run
    time, ``match``) in the core or the extension. vermin parses the source; nothing is imported."""
    extension = PACKAGE.parents[2] / "MedFoundSlicer"
    assert extension.is_dir(), extension
    assert _python39_violations(PACKAGE, extension) == ""
    newer = tmp_path / "newer.py"
    newer.write_text("def f(a, b):\n    return isinstance(a, int | float), list(zip(a, b, strict=True))\n")
    assert "zip(strict)" in _python39_violations(newer)  # the check sees what it must refuse
