"""First-use installation of MedFound's Python dependencies into Slicer's Python.

Order matters: torch first (through the PyTorch Utils extension, which picks the CUDA/CPU build that
matches the machine; plain pip only when that extension is absent), then ``medfoundcore`` with pip.
What Slicer itself ships (SimpleITK, numpy, vtk) is never reinstalled or upgraded: pip is told to keep
the installed versions through a constraints file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

MINIMUM_TORCH = "2.2"
# Override with a wheel path or "-e /path/to/MedFoundCore" for development builds.
CORE_REQUIREMENT = os.environ.get("MEDFOUNDCORE_REQUIREMENT", "medfoundcore")
# Distributions that Slicer bundles; their installed versions are pinned during our installs.
SLICER_OWNED = ("SimpleITK", "numpy", "vtk")


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


def keep_slicer_packages_constraints() -> str:
    """Path of a pip constraints file pinning the Slicer-owned packages at their installed versions."""
    lines = [f"{name}=={version}" for name in SLICER_OWNED if (version := _version(name))]
    handle, path = tempfile.mkstemp(prefix="medfound-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    return path


def install_torch(pip_install: Callable[[str], None], log: Callable[[str], None]) -> None:
    """Install torch via PyTorch Utils when that extension is present, else via pip (CPU/CUDA per index)."""
    try:
        import PyTorchUtils  # the Slicer "PyTorch" extension, listed in EXTENSION_DEPENDS
    except ImportError:
        log("PyTorch Utils extension not found: installing torch with pip.")
        pip_install(f"torch>={MINIMUM_TORCH}")
        return
    log("Installing PyTorch through the PyTorch Utils extension (it picks the right CUDA build)...")
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={MINIMUM_TORCH}")
    if torch is None:
        raise RuntimeError("PyTorch was not installed (declined or failed); MedFound needs it to run models.")


def install_dependencies(
    pip_install: Callable[[str], None],
    log: Callable[[str], None] = print,
    core_requirement: str = CORE_REQUIREMENT,
) -> DependencyStatus:
    """Install what is missing (torch, then MedFoundCore) and return the new status.

    ``pip_install`` is ``slicer.util.pip_install`` inside Slicer; it takes one argument string.
    ``core_requirement`` may be a wheel path or a source folder (``-e /path/MedFoundCore``) for developers.
    """
    status = dependency_status()
    if status.torch_version is None:
        install_torch(pip_install, log)
    if status.core_version is None:
        constraints = keep_slicer_packages_constraints()
        try:
            log(f"Installing {core_requirement} (keeping Slicer's SimpleITK, numpy and vtk)...")
            pip_install(f"{core_requirement} -c {constraints}")
        finally:
            os.unlink(constraints)
    importlib.invalidate_caches()
    new_status = dependency_status()
    if not new_status.satisfied:
        raise RuntimeError(
            "MedFound could not install " + " and ".join(new_status.missing)
            + "; see the Python console for pip's messages, then restart Slicer and try again."
        )
    return new_status
