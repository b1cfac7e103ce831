"""pathosam: nucleus segmentation in histopathology images with PathoSAM.

Main entry points: :func:`load_model` and the :class:`PathoSAM` model it returns.
"""

from __future__ import annotations

from .embeddings import ImageEmbeddings
from .model import PathoSAM, load_model

__version__ = "0.1.0"
__all__ = ["ImageEmbeddings", "PathoSAM", "load_model", "__version__"]
