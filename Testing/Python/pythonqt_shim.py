"""Slicer's Python view of Qt (PythonQt) on top of PySide6, so the module's Widget runs offscreen here.

What PythonQt does and PySide6 does not, and the Widget relies on: Qt properties read and written as
attributes (``label.text = "..."``, ``combo.currentText``), ``obj.connect("signal(args)", slot)``, and
the ``qt`` / ``ctk`` modules. :func:`wrap` gives any QObject that behaviour; :func:`install` registers
``qt`` and ``ctk`` and replaces the GUI parts of ``slicer.util`` (loadUI, message boxes) and
``slicer.modules.plots.logic()`` (showing a chart in the layout) that slicer-core cannot run without a
Slicer application. The MRML widgets are small stand-ins that hold a real node.
``slicer.util.createProgressDialog`` needs no stand-in: slicer-core's own runs on this ``qt`` (its
``QProgressDialog`` parented to ``mainWindow()``, which is None here).
"""

from __future__ import annotations

import contextlib
import sys
import types

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets


def unwrap(value):
    return value._qobject if isinstance(value, PythonQtObject) else value


def wrap(value):
    """A QObject as PythonQt shows it; anything else unchanged."""
    if isinstance(value, QtCore.QObject) and not isinstance(value, PythonQtObject):
        return PythonQtObject(value)
    return value


def _call(function):
    def call(*args, **kwargs):
        return wrap(function(*(unwrap(a) for a in args), **{k: unwrap(v) for k, v in kwargs.items()}))

    return call


class PythonQtObject:
    """Properties as attributes, methods with wrapped arguments and results, string-signature connect."""

    def __init__(self, qobject: QtCore.QObject) -> None:
        object.__setattr__(self, "_qobject", qobject)

    def _isProperty(self, name: str) -> bool:
        return self._qobject.metaObject().indexOfProperty(name) >= 0

    def __getattr__(self, name: str):
        if self._isProperty(name):
            return self._qobject.property(name)
        value = getattr(self._qobject, name)
        return _call(value) if callable(value) else wrap(value)

    def __setattr__(self, name: str, value) -> None:
        if self._isProperty(name):
            if not self._qobject.setProperty(name, unwrap(value)):
                raise AttributeError(f"could not set Qt property {name!r}")
        else:
            setattr(self._qobject, name, unwrap(value))

    def __eq__(self, other) -> bool:
        return unwrap(other) is self._qobject

    def __hash__(self) -> int:
        return hash(self._qobject)

    def connect(self, signature: str, slot) -> None:
        """``connect("clicked()", slot)``: PythonQt's form; results are wrapped for the slot."""
        signal = getattr(self._qobject, signature.split("(", 1)[0])
        signal.connect(lambda *args: slot(*(wrap(a) for a in args)))


class _QtClass:
    """A QObject class whose instances come out wrapped (``qt.QTimer()``, ``qt.QCompleter(...)``)."""

    def __init__(self, cls) -> None:
        self._cls = cls

    def __call__(self, *args, **kwargs):
        return wrap(self._cls(*(unwrap(a) for a in args), **kwargs))

    def __getattr__(self, name: str):
        value = getattr(self._cls, name)
        return _call(value) if callable(value) and not isinstance(value, type) else value


def _qt_module() -> types.ModuleType:
    module = types.ModuleType("qt")
    for namespace in (QtCore, QtGui, QtWidgets):
        for name in dir(namespace):
            if name.startswith("Q") or name == "Qt":
                value = getattr(namespace, name)
                is_qobject = isinstance(value, type) and issubclass(value, QtCore.QObject)
                setattr(module, name, _QtClass(value) if is_qobject else value)
    return module


# ---------------------------------------------------------------- MRML / CTK widget stand-ins
class qMRMLWidget(QtWidgets.QWidget):
    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Holds a real MRML node; ``currentNodeChanged`` fires as in Slicer."""

    currentNodeChanged = QtCore.Signal(object)
    SAMPLE = {"vtkMRMLScalarVolumeNode": "CT abdomen", "vtkMRMLSegmentationNode": "CT abdomen segmentation"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._types: list[str] = []
        self._none = ""
        self._node = None
        self.baseName = ""
        self.noneEnabled = False

    def _refresh(self) -> None:
        self.clear()
        self.addItem(self._node.GetName() if self._node is not None else
                     (self._none or self.SAMPLE.get(self._types[0] if self._types else "", "node")))

    def _get_types(self) -> list[str]:
        return self._types

    def _set_types(self, types) -> None:
        self._types = list(types)
        self._refresh()

    def _get_none(self) -> str:
        return self._none

    def _set_none(self, text: str) -> None:
        self._none = text
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _get_types, _set_types)
    noneDisplay = QtCore.Property(str, _get_none, _set_none)

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self._refresh()
            self.currentNodeChanged.emit(node)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A group box titled like the collapsible button's text; ``collapsed`` hides its contents."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def _text(self) -> str:
        return self.title()

    def _set_text(self, text: str) -> None:
        self.setTitle(text)

    def _get_collapsed(self) -> bool:
        return self._collapsed

    def _set_collapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        self._apply_collapsed()

    def _apply_collapsed(self) -> None:
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)

    def showEvent(self, event) -> None:  # the loader sets properties before it adds the children
        self._apply_collapsed()
        super().showEvent(event)

    text = QtCore.Property(str, _text, _set_text)
    collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)


class ctkPathLineEdit(QtWidgets.QLineEdit):
    currentPathChanged = QtCore.Signal(str)
    Dirs = 1

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.filters = 0
        self.textChanged.connect(self.currentPathChanged.emit)

    def _get_path(self) -> str:
        return self.text()

    def _set_path(self, path: str) -> None:
        self.setText(path)

    currentPath = QtCore.Property(str, _get_path, _set_path)


STAND_INS = [qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit]


def load_ui(path: str) -> QtWidgets.QWidget:
    """The .ui file loaded with the stand-ins (like ``slicer.util.loadUI``), unwrapped."""
    loader = QtUiTools.QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    stream = QtCore.QFile(str(path))
    if not stream.open(QtCore.QFile.ReadOnly):
        raise OSError(f"cannot open {path}")
    widget = loader.load(stream)
    stream.close()
    if widget is None:
        raise RuntimeError(loader.errorString())
    return widget


class Dialogs:
    """What the Widget showed the user: errors (a test expects none unless it provokes one), questions."""

    def __init__(self, answer_yes: bool = False) -> None:
        self.errors: list[str] = []
        self.questions: list[str] = []
        self.answer_yes = answer_yes

    def errorDisplay(self, text, *args, **kwargs) -> None:
        self.errors.append(str(text))

    def confirm(self, text, *args, **kwargs) -> bool:
        self.questions.append(str(text))
        return self.answer_yes

    @contextlib.contextmanager
    def tryWithErrorDisplay(self, message="", show=True, waitCursor=False):
        """As in Slicer: an exception is shown (here: recorded with its message), then raised again
        (Slicer's ``tryWithErrorDisplay`` ends with ``raise``; from a slot it only reaches the console)."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - mirrors slicer.util.tryWithErrorDisplay
            self.errors.append(f"{message} {error}")
            raise


def install(monkeypatch, dialogs: Dialogs) -> tuple[types.ModuleType, types.ModuleType]:
    """Register ``qt``/``ctk`` and the GUI parts of ``slicer.util`` for one test (undone afterwards)."""
    import slicer

    qt = _qt_module()
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = ctkPathLineEdit
    ctk.ctkCollapsibleButton = ctkCollapsibleButton
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "ctk", ctk)
    util = slicer.util
    monkeypatch.setattr(util, "loadUI", lambda path: wrap(load_ui(path)), raising=False)
    monkeypatch.setattr(util, "childWidgetVariables", lambda widget: types.SimpleNamespace(
        **{child.objectName(): wrap(child) for child in unwrap(widget).findChildren(QtCore.QObject) if child.objectName()}),
        raising=False)
    monkeypatch.setattr(util, "errorDisplay", dialogs.errorDisplay, raising=False)
    monkeypatch.setattr(util, "confirmYesNoDisplay", dialogs.confirm, raising=False)
    monkeypatch.setattr(util, "confirmOkCancelDisplay", dialogs.confirm, raising=False)
    monkeypatch.setattr(util, "tryWithErrorDisplay", dialogs.tryWithErrorDisplay, raising=False)
    monkeypatch.setattr(util, "setSliceViewerLayers", lambda **kwargs: None, raising=False)
    monkeypatch.setattr(util, "showStatusMessage", lambda *args, **kwargs: None, raising=False)
    monkeypatch.setattr(util, "mainWindow", lambda: None, raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(plots=types.SimpleNamespace(logic=lambda: PLOTS)), raising=False)
    PLOTS.shown.clear()
    return qt, ctk


class PlotsLogic:
    """``slicer.modules.plots.logic()``: remembers the chart nodes it was asked to show (no layout here)."""

    def __init__(self) -> None:
        self.shown = []

    def ShowChartInLayout(self, chartNode) -> None:
        self.shown.append(chartNode)


PLOTS = PlotsLogic()
