"""Instance segmentation post-processing (automatic instance segmentation, AIS)."""

from .ais import ais_from_maps

__all__ = ["ais_from_maps"]
