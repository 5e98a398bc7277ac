"""Stand-ins for the pieces of Slicer that PyPI slicer-core lacks: the scripted-module base classes,
``slicer.app`` (with a real application logic), ``slicer.mrmlScene`` and i18n. Everything else the tests use (vtkMRMLScene, volume,
segmentation, markups and storage nodes, ``slicer.util`` with its ``VTKObservationMixin``) is the real
slicer-core code.

Why the base classes behave like Slicer 5.8's (``Base/Python/slicer/ScriptedLoadableModule.py``):
their ``__init__`` methods are cooperative (each calls ``super().__init__()`` with no arguments), they
set ``moduleName`` from the class name, and the Logic finds or creates its singleton parameter node in
``slicer.mrmlScene``. A stand-in that skipped any of this let a broken multiple-inheritance chain pass.
Written from Slicer's documented behaviour, not copied.
"""

from __future__ import annotations

import sys
import types
import unittest


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) else name


class ScriptedLoadableModule:
    """Like Slicer's: cooperative ``__init__``, ``moduleName`` = class name, template metadata on parent."""

    def __init__(self, parent) -> None:
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""


class ScriptedLoadableModuleLogic:
    """Like Slicer's: ``super().__init__()`` first (no arguments), then moduleName and the parameter node."""

    def __init__(self, parent=None) -> None:
        super().__init__()
        self.moduleName = _strip(self.__class__.__name__, "Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        """The module's singleton ``vtkMRMLScriptedModuleNode`` in ``slicer.mrmlScene`` (created on first use)."""
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        if node.GetAttribute("ModuleName") != self.moduleName:
            node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleWidget:
    """Like Slicer's for a widget given a parent: cooperative ``__init__``, moduleName, ``layout``."""

    def __init__(self, parent=None) -> None:
        super().__init__()
        self.moduleName = _strip(self.__class__.__name__, "Widget")
        self.developerMode = False
        self.parent = parent
        self.layout = parent.layout() if parent is not None else None

    def resourcePath(self, filename: str) -> str:
        import os

        module = sys.modules[self.__class__.__module__]
        return os.path.join(os.path.dirname(module.__file__), "Resources", filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, requestedDelay=None, msec=None) -> None:
        print(message)


class _Application:
    """``slicer.app`` without a main window: enough for code that asks whether it runs headless, and
    ``processEvents`` runs the Qt event loop once when the test made a QApplication (as Slicer's does)."""

    commandOptions = types.SimpleNamespace(noMainWindow=True)

    def __init__(self) -> None:
        self._logic = None

    def applicationLogic(self):
        """Slicer's application logic on the current ``slicer.mrmlScene``: a real ``vtkSlicerApplicationLogic``,
        which adds the scene's selection and interaction singletons as Slicer's does (place mode uses them)."""
        import slicer

        if self._logic is None or self._logic.GetMRMLScene() is not slicer.mrmlScene:
            self._logic = slicer.vtkSlicerApplicationLogic()
            self._logic.SetMRMLScene(slicer.mrmlScene)
        return self._logic

    def processEvents(self) -> None:
        qtcore = sys.modules.get("PySide6.QtCore")
        if qtcore is not None and qtcore.QCoreApplication.instance() is not None:
            qtcore.QCoreApplication.processEvents()


def install() -> None:
    """Register the stand-ins as ``slicer.ScriptedLoadableModule``, ``slicer.i18n``, ``slicer.app``, ``slicer.mrmlScene``."""
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
    if getattr(slicer, "mrmlScene", None) is None:
        slicer.mrmlScene = slicer.vtkMRMLScene()
