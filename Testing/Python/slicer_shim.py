"""Stand-ins for the three pieces of Slicer that PyPI slicer-core lacks: the scripted-module base
classes, ``slicer.app`` and i18n. Everything else the tests use (vtkMRMLScene, volume, segmentation,
markups and storage nodes, slicer.util) is the real slicer-core code.
"""

from __future__ import annotations

import sys
import types
import unittest


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        pass


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)


class _Application:
    """``slicer.app`` without a GUI: enough for code that asks whether it runs headless."""

    commandOptions = types.SimpleNamespace(noMainWindow=True)

    def processEvents(self) -> None:
        pass


def install() -> None:
    """Register the stand-ins as ``slicer.ScriptedLoadableModule``, ``slicer.i18n`` and ``slicer.app``."""
    import slicer

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget, ScriptedLoadableModuleTest):
        setattr(scripted, cls.__name__, cls)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda _context, text: text
    sys.modules["slicer.ScriptedLoadableModule"] = scripted
    sys.modules["slicer.i18n"] = i18n
    slicer.ScriptedLoadableModule = scripted
    slicer.i18n = i18n
    if not hasattr(slicer, "app"):
        slicer.app = _Application()
