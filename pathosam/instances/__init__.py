"""Instance segmentation: AIS (decoder maps -> seeded watershed, untiled and tiled) and AMG."""

from .ais import ais_from_maps
from .amg import amg_from_embeddings, masks_to_labels
from .tiled import AISParams, TiledAIS

__all__ = ["AISParams", "TiledAIS", "ais_from_maps", "amg_from_embeddings", "masks_to_labels"]
