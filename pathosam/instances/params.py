"""Post-processing parameters of AIS and AMG: the one place their defaults, units and help live.

:class:`AISParams` (the seeded watershed of :func:`pathosam.instances.ais_from_maps`) and
:class:`AMGParams` (SAM's automatic mask generation, :mod:`pathosam.instances.amg`) are frozen
dataclasses. Each field carries its default (the reference's: micro-sam ``generate`` /
``AutomaticMaskGenerator``), its unit and a one-line help in ``field.metadata``; the library
functions take their defaults from here, and the command line builds its options from the fields
(:func:`parameter_help`). A registered model may recommend other AIS values
(``registry.ModelEntry.ais_defaults``); they are applied over these defaults wherever that model
is used (:func:`pathosam.automatic.ais_params`).
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any

#: Seed rules: "distance" = the reference's thresholds on the centre and boundary distances;
#: "shape" = maxima of the foreground mask's distance transform (see :mod:`pathosam.instances.ais`).
SEED_MODES = ("distance", "shape")


def _param(default: Any, help: str, unit: str = "", choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its default and, in ``metadata``, its help, unit and choices."""
    return field(default=default, metadata={"help": help, "unit": unit, "choices": choices})


@dataclass(frozen=True)
class AISParams:
    """Post-processing parameters of AIS; defaults are the reference's (micro-sam ``generate``).

    Validation (:class:`ValueError`) happens on construction. See
    :func:`pathosam.instances.ais_from_maps` for what each parameter does.
    """

    center_distance_threshold: float = _param(0.5, "seed threshold on the smoothed centre distance (0..1)")
    boundary_distance_threshold: float = _param(0.5, "seed threshold on the smoothed boundary distance (0..1)")
    foreground_threshold: float = _param(0.5, "foreground probability threshold (0..1)")
    foreground_smoothing: float = _param(1.0, "Gaussian sigma of the foreground map; 0 = none", "px")
    distance_smoothing: float = _param(1.6, "Gaussian sigma of the two distance maps; 0 = none", "px")
    min_size: int = _param(0, "remove nuclei with fewer pixels than this", "px")
    seeds: str = _param("distance", "distance: the reference's seeds (both distance thresholds); shape: maxima "
                        "of the foreground's distance transform, one seed per blob", choices=SEED_MODES)
    seed_dynamic: float = _param(2.0, "shape seeds: minimum height of a maximum above its saddle", "px")
    seed_center_weight: float = _param(10.0, "shape seeds: weight of the centre distance map; 0 = mask shape "
                                       "only", "px")

    def __post_init__(self) -> None:
        if self.seeds not in SEED_MODES:
            raise ValueError(f"seeds must be one of {SEED_MODES}, got {self.seeds!r}")
        if not self.seed_dynamic > 0 or not self.seed_center_weight >= 0:
            raise ValueError(f"seed_dynamic must be > 0 and seed_center_weight >= 0, got {self.seed_dynamic}, "
                             f"{self.seed_center_weight}")
        if self.foreground_smoothing < 0 or self.distance_smoothing < 0:
            raise ValueError(f"smoothing sigmas must be >= 0, got {self.foreground_smoothing}, "
                             f"{self.distance_smoothing}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")


@dataclass(frozen=True)
class AMGParams:
    """Parameters of SAM's automatic mask generation; defaults are the reference's (micro-sam's
    ``AutomaticMaskGenerator`` / ``generate``). Validation (:class:`ValueError`) happens on
    construction; see :func:`pathosam.instances.amg.amg_from_embeddings`."""

    points_per_side: int = _param(32, "point grid per side of the image or of each tile")
    points_per_batch: int = _param(64, "points per mask-decoder call (memory: ~21 MB per point on CPU)")
    pred_iou_thresh: float = _param(0.88, "keep masks with a predicted IoU above this; 0 = off")
    stability_score_thresh: float = _param(0.95, "keep masks with a stability score of at least this; 0 = off")
    box_nms_thresh: float = _param(0.7, "box NMS IoU threshold within an image or tile")
    crop_nms_thresh: float = _param(0.7, "box NMS IoU threshold across tiles")
    min_mask_region_area: int = _param(0, "remove holes and islands smaller than this from each mask; 0 = off",
                                       "px")
    stability_score_offset: float = _param(1.0, "logit offset of the stability score")
    min_object_size: int = _param(0, "drop masks and final objects with fewer pixels than this", "px")

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_mask_region_area", "min_object_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                     "stability_score_offset"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")


#: The defaults, as instances (``AIS_DEFAULTS.min_size``...): for signatures that take them.
AIS_DEFAULTS = AISParams()
AMG_DEFAULTS = AMGParams()


def parameter_help(f: Field) -> str:
    """Help line of a parameter field: its help, then its default with the unit (for the CLI)."""
    unit = f" {f.metadata['unit']}" if f.metadata.get("unit") else ""
    return f"{f.metadata['help']} (default {f.default}{unit})"


def parameter_names(cls: type) -> tuple[str, ...]:
    """The field names of :class:`AISParams` or :class:`AMGParams`, in order."""
    return tuple(f.name for f in fields(cls))
