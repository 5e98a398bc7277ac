"""First-use installation of MedFound's Python dependencies into Slicer's Python.

Order matters: torch first, through the PyTorch extension (``PyTorchUtils``, a build dependency of
this extension), which picks the CUDA or CPU build that matches the machine; then MedFoundCore from
the files the extension carries (a wheel built at extension build time, or its source folder in a
developer checkout) -- it is on no package index. Its own dependencies come from PyPI, with what Slicer
ships (numpy, vtk, SimpleITK) and the torch just installed pinned at their installed versions through a
constraints file, so pip never replaces them. Arguments go to ``slicer.util.pip_install`` as a list,
so paths with spaces (``C:\\Users\\John Smith\\...``) stay one argument.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MINIMUM_TORCH = "2.2"
MINIMUM_PYTHON = (3, 9)  # MedFoundCore's requires-python (Slicer 5.8 ships 3.9.10)
# Distributions whose installed versions pip must keep: Slicer's own, and torch once PyTorchUtils chose it.
KEEP_INSTALLED = ("SimpleITK", "numpy", "vtk", "torch")
CARRIED_DIR = "MedFoundCore"  # beside the module's .py file in an installed extension (see MedFoundSlicer/CMakeLists.txt)
MODULE_DIR = Path(__file__).resolve().parents[1]

PipInstall = Callable[[list], None]


@dataclass(frozen=True)
class DependencyStatus:
    """What is installed now and what is missing, in words a user can act on."""

    torch_version: str | None
    core_version: str | None

    @property
    def satisfied(self) -> bool:
        return self.torch_version is not None and self.core_version is not None

    @property
    def missing(self) -> list[str]:
        return [name for name, v in (("PyTorch", self.torch_version), ("MedFoundCore", self.core_version)) if v is None]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def dependency_status() -> DependencyStatus:
    """Installed torch and medfoundcore versions (None when missing); imports nothing heavy."""
    return DependencyStatus(_version("torch"), _version("medfoundcore"))


def carried_core(module_dir: Path = MODULE_DIR) -> Path:
    """What the extension carries of MedFoundCore: its wheel if one was built, else its source folder.

    Installed extension: ``<module dir>/MedFoundCore/`` (a ``medfoundcore-*.whl`` inside); source
    checkout: the repository's ``MedFoundCore/`` beside ``MedFoundSlicer/``.
    """
    for folder in (module_dir / CARRIED_DIR, module_dir.parent / CARRIED_DIR):
        wheels = sorted(folder.glob("medfoundcore-*.whl"))
        if wheels:
            return wheels[-1]
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError(f"this MedFound extension is incomplete: no MedFoundCore under {module_dir}; reinstall the extension")


def keep_installed_constraints() -> str:
    """Path of a pip constraints file pinning numpy, vtk, SimpleITK and torch at their installed versions."""
    lines = [f"{name}=={version}" for name in KEEP_INSTALLED if (version := _version(name))]
    handle, path = tempfile.mkstemp(prefix="medfound-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def core_install_args(core: Path, constraints: str) -> list[str]:
    """``pip install`` arguments for the carried core: one list item per argument (spaces are safe)."""
    return [str(core), "-c", constraints]


def install_torch(pip_install: PipInstall, log: Callable[[str], None]) -> None:
    """Install torch via PyTorchUtils' ``installTorch`` (CUDA build for the machine); plain pip only without it."""
    try:
        import PyTorchUtils  # the Slicer "PyTorch" extension, listed in EXTENSION_DEPENDS
    except ImportError:
        log("The PyTorch extension was not found: installing the default torch build with pip.")
        pip_install([f"torch>={MINIMUM_TORCH}"])
        return
    log("Installing PyTorch through the PyTorch extension (it picks the build for this computer's GPU)...")
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise RuntimeError("PyTorch was not installed (declined or failed); MedFound needs it to run models.")


def install_core(pip_install: PipInstall, log: Callable[[str], None] = print, core: Path | None = None) -> None:
    """Install MedFoundCore from the extension's own files, keeping numpy, vtk, SimpleITK and torch as they are."""
    core = core or carried_core()
    constraints = keep_installed_constraints()
    try:
        log(f"Installing MedFoundCore from {core} (keeping Slicer's numpy, VTK, SimpleITK and the installed PyTorch)...")
        pip_install(core_install_args(core, constraints))
    finally:
        os.unlink(constraints)


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:2])) -> None:
    """Refuse early, in words, on a Python older than MedFoundCore supports (pip's message is cryptic)."""
    if version < MINIMUM_PYTHON:
        have, need = ".".join(map(str, version)), ".".join(map(str, MINIMUM_PYTHON))
        raise RuntimeError(f"MedFound needs Python {need} or newer; this Slicer has Python {have}. "
                           "Use Slicer 5.8 or later.")


def install_dependencies(pip_install: PipInstall, log: Callable[[str], None] = print) -> DependencyStatus:
    """Install what is missing (torch, then MedFoundCore) and return the new status.

    ``pip_install`` is ``slicer.util.pip_install`` inside Slicer; it is given a list of arguments.
    """
    status = dependency_status()
    if not status.satisfied:
        check_python()
    if status.torch_version is None:
        install_torch(pip_install, log)
    if status.core_version is None:
        install_core(pip_install, log)
    importlib.invalidate_caches()
    new_status = dependency_status()
    if not new_status.satisfied:
        raise RuntimeError(
            "MedFound could not install " + " and ".join(new_status.missing)
            + "; see the Python console for pip's messages, then restart Slicer and try again."
        )
    return new_status
