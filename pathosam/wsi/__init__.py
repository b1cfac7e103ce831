"""Whole-slide images: lazy slide reading, tissue detection (the streaming pipeline builds on these)."""

from .slide import Slide, is_slide, open_slide
from .tissue import tile_has_tissue, tissue_mask

__all__ = ["Slide", "is_slide", "open_slide", "tile_has_tissue", "tissue_mask"]
