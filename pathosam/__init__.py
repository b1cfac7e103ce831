"""pathosam: nucleus segmentation in histopathology images with PathoSAM.

Main entry points: :func:`load_model` and the :class:`PathoSAM` model it returns. The heavy
modules (torch) are imported on first use, so ``pathosam --help`` starts fast.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "ImageEmbeddings", "PathoSAM", "Segmentation", "ais_from_maps", "load_model", "segment", "segment_nuclei",
    "__version__",
]

_LAZY = {
    "ImageEmbeddings": "embeddings", "PathoSAM": "predictor", "load_model": "predictor", "ais_from_maps": "instances",
    "segment": "automatic", "segment_nuclei": "automatic", "Segmentation": "automatic",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pathosam' has no attribute {name!r}")
