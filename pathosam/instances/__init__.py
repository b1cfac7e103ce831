"""Instance segmentation: AIS (decoder maps -> seeded watershed, untiled and tiled) and AMG;
their parameters (:class:`AISParams`, :class:`AMGParams`, in :mod:`.params`).

The submodules are imported on first use, so reading the parameters (the CLI builds its options
from them) imports neither torch nor scikit-image.
"""

from __future__ import annotations

__all__ = ["AISParams", "AMGParams", "TiledAIS", "ais_from_maps", "amg_from_embeddings", "masks_to_labels"]

_LAZY = {"AISParams": "params", "AMGParams": "params", "TiledAIS": "tiled", "ais_from_maps": "ais",
         "amg_from_embeddings": "amg", "masks_to_labels": "amg"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
