"""The extension's CMake files list every script and resource that exists, and nothing that does not."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedFoundSlicer"


def _listed(block: str) -> set[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    body = re.search(rf"set\({block}\n(.*?)\n\s*\)", text, re.S).group(1)
    return {line.strip().replace("${MODULE_NAME}", "MedFoundSlicer") for line in body.splitlines() if line.strip()}


def test_cmake_lists_every_script():
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "Testing" not in p.parts and "__pycache__" not in p.parts}
    assert _listed("MODULE_PYTHON_SCRIPTS") == on_disk


def test_cmake_lists_every_resource():
    on_disk = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert _listed("MODULE_PYTHON_RESOURCES") == on_disk


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(MedFoundSlicer)" in text
    assert (REPO / "Resources" / "MedFound.png").is_file()
    for shot in re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', text).group(1).split():
        assert (REPO / "Resources" / "Screenshots" / shot.rsplit("/", 1)[-1]).is_file(), shot


def test_installer_pins_what_slicer_ships_and_skips_satisfied_dependencies():
    import importlib.metadata
    import os

    from MedFoundSlicerLib import install

    status = install.dependency_status()
    assert status.satisfied and status.torch_version == importlib.metadata.version("torch")
    path = install.keep_slicer_packages_constraints()
    try:
        pins = set(Path(path).read_text().split())
    finally:
        os.unlink(path)
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pins
    assert f"vtk=={importlib.metadata.version('vtk')}" in pins

    def pip_must_not_run(requirement: str) -> None:
        raise AssertionError(f"pip was asked to install {requirement!r} although everything is installed")

    assert install.install_dependencies(pip_must_not_run, log=lambda _text: None).satisfied
