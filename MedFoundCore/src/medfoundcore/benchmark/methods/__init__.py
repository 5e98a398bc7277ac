"""The benchmarked methods by CLI key, in table order (MedFound first, then the MONAI baselines)."""

from __future__ import annotations

from ...errors import InputError
from .base import Method, MethodSettings
from .medfound_3dme import ThreeDMEFinetuned, ThreeDMEFrozen, ThreeDMERandomFrozen
from .medfound_text import MedFoundText
from .monai_baselines import DynUNetBaseline, SwinUNETRBaseline, UNet3D, UNETRBaseline

METHODS: dict[str, type[Method]] = {
    cls.key: cls
    for cls in (MedFoundText, ThreeDMEFrozen, ThreeDMEFinetuned, ThreeDMERandomFrozen, UNet3D, DynUNetBaseline, UNETRBaseline, SwinUNETRBaseline)
}


def build_method(key: str, settings: MethodSettings) -> Method:
    """Instantiate the method registered under ``key``."""
    if key not in METHODS:
        raise InputError(f"unknown benchmark method {key!r}; choose from {', '.join(METHODS)}")
    return METHODS[key](settings)


def parse_methods(text: str | None) -> list[str]:
    """``"unet,swinunetr"`` -> keys in table order; None or "all" -> every method."""
    if text is None or text.strip().lower() == "all":
        return list(METHODS)
    keys = [k.strip().lower() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        raise InputError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)} or all")
    return [k for k in METHODS if k in keys]
