"""``POST /sam/automask/``: every object of the sent image as SAM-API Features.

The wire format does not fix the algorithm, so the server uses the best one the model has:

* **AIS** (the model has a PathoSAM instance decoder): the segmentation of
  :func:`pathosam.segment_nuclei` with ``mode="ais"`` and the model's AIS defaults -- untiled up
  to half the model input (512 px for SAM sizes, 128 px for ``pathosam_small``), else tiles
  (384 + 64 px halo for SAM sizes) streamed tile by tile through the seam-free block
  post-processing; each nucleus also gets a score: ``quality`` = the mean foreground
  probability inside the nucleus (AIS has no IoU head), from the tiles' maps handed to the
  ``on_tiles`` callback, which is also where the work pauses for prompts and stops (time limit,
  client gone) between tiles. An untiled image runs through ``model.embed``,
  ``model.instance_maps`` and ``ais_from_maps`` instead, so that a cached embedding is reused.
  The AMG fields of the request (``points_per_side``, thresholds, ``output_type``) do not
  apply and are ignored (``output_type`` must still be a valid string). An untiled embedding
  is kept in the embedding cache, so prompts on the same image afterwards are fast.
* **AMG** (plain SAM weights): SAM's automatic mask generator on the untiled embedding (the one
  the prompt endpoint caches), with the request's ``points_per_side``, ``points_per_batch``,
  ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``,
  ``box_nms_thresh`` and ``min_mask_region_area`` (``points_per_side`` <= 64;
  ``points_per_batch`` is capped at 64, which bounds memory without changing the masks); one
  Feature per kept mask with its predicted IoU as ``quality`` (overlaps allowed, as samapi).
  ``output_type`` picks how the within-image box NMS ranks masks, as the MobileSAM fork does:
  ``"Multi-mask (all)"`` no NMS, ``"(largest)"`` by area, ``"(smallest)"`` by negative area,
  ``"(best quality)"`` and ``"Single mask"`` by predicted IoU (SAM's own rule; every point
  gives 3 masks, the fork's 1-mask-per-point mode is not reproduced). ``crop_n_layers`` > 0 (never sent by the
  extension) is ignored: one crop, the whole image. The work pauses / stops between point
  batches (``on_batch`` of :func:`~pathosam.instances.amg.generate_mask_candidates`).

Both: ``include_image_edge=false`` drops masks whose bounding box touches all four image
borders (samapi's rule against whole-image masks). ``object_idx`` = position - 1.
"""

from __future__ import annotations

import numpy as np

from .errors import RequestError
from .geometry import feature, mask_to_ring
from .images import decode_image, image_key
from .jobs import Job
from .wire import OUTPUT_TYPES, SAMAutoMaskBody

__all__ = ["automask_features", "check_output_type"]


def check_output_type(value: str) -> str:
    """The canonical ``output_type`` (case-insensitive; samapi's ``"Single Mask"`` accepted); 400 otherwise."""
    for t in OUTPUT_TYPES:
        if value.strip().lower() == t.lower():
            return t
    raise RequestError(400, f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {value!r}")


def _touches_all_borders(box_rc: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    r0, c0, r1, c1 = box_rc  # inclusive
    return r0 == 0 and c0 == 0 and r1 == shape[0] - 1 and c1 == shape[1] - 1


def automask_features(engine, model, source, b64img: str, body: SAMAutoMaskBody, job: Job) -> list[dict]:
    """Features of all objects (called by :meth:`Engine.automask` with the lock held; ``job``
    pauses or stops the work between chunks)."""
    output_type = check_output_type(body.output_type)

    def checkpoint(*_args) -> None:
        engine.stats["chunks"] += 1
        job.checkpoint()

    if model.decoder is not None:
        return _ais(engine, model, source, b64img, body, checkpoint)
    return _amg(engine, model, source, b64img, body, output_type, checkpoint)


def _ais(engine, model, source, b64img: str, body: SAMAutoMaskBody, checkpoint) -> list[dict]:
    from scipy import ndimage

    from ..automatic import MIN_SIDE, ais_params, segment_nuclei
    from ..inference import paste_inner, resolve_tiling
    from ..instances import ais_from_maps

    cache = engine.embeddings  # untiled embeddings only: used when AIS would not tile either
    key = None if cache is None else cache.key(image_hash=image_key(b64img), model=model)
    cached = None if cache is None else cache.peek(key)
    rgb = None if cached is not None and not model.needs_image() else decode_image(b64img, engine.max_image_pixels)
    shape = cached.image_shape if cached is not None else rgb.shape[:2]
    if min(shape) < MIN_SIDE:
        raise RequestError(400, f"image of {shape[1]}x{shape[0]} px is too small for automask "
                                f"(at least {MIN_SIDE}x{MIN_SIDE})")
    ts, hl = resolve_tiling(shape, "auto", None, model.img_size)
    if ts is None:  # one chunk
        if cached is not None:
            emb = cached
        else:
            emb = model.embed(rgb, progress=False)
            if cache is not None:
                cache.put(key, emb)
        maps = model.instance_maps(emb, progress=False, image=rgb)
        checkpoint()
        labels, foreground = ais_from_maps(maps, **ais_params(model).__dict__), maps[0]
    else:  # tile by tile, pausing for prompts in between
        foreground = np.zeros(shape, np.float32)

        def on_tiles(tiles, maps) -> None:
            for t, m in zip(tiles, maps):
                paste_inner(foreground[None], t, m[:1])
            checkpoint()

        if rgb is None:
            rgb = decode_image(b64img, engine.max_image_pixels)
        labels = segment_nuclei(rgb, model, "ais", tile_shape=ts, halo=hl, progress=False, on_tiles=on_tiles).labels
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return []
    quality = ndimage.mean(foreground, labels, np.arange(1, n + 1))
    out: list[dict] = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        if not body.include_image_edge and _touches_all_borders(
                (sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1), shape):
            continue
        ring = mask_to_ring(labels[sl] == i + 1, (sl[0].start, sl[1].start))
        if ring is not None:
            out.append(feature(ring, len(out) - 1, float(quality[i]), body.type.value))
    return out


def _amg(engine, model, source, b64img: str, body: SAMAutoMaskBody, output_type: str, checkpoint) -> list[dict]:
    from ..instances.amg import box_nms, generate_mask_candidates, postprocess_small_regions

    _, emb = engine.embedding(source, b64img, model)
    shape = emb.image_shape
    cands = generate_mask_candidates(  # batch size capped: ~21 MB per point on CPU, same masks
        model, emb, points_per_side=body.points_per_side or 32,
        points_per_batch=min(body.points_per_batch, 64), pred_iou_thresh=body.pred_iou_thresh,
        stability_score_thresh=body.stability_score_thresh, stability_score_offset=body.stability_score_offset,
        progress=False, on_batch=checkpoint)
    records = [r for crop in cands.crops for r in crop]
    if records and output_type != "Multi-mask (all)":
        if output_type == "Multi-mask (largest)":
            scores = np.array([r.area for r in records], dtype=np.float32)
        elif output_type == "Multi-mask (smallest)":
            scores = -np.array([r.area for r in records], dtype=np.float32)
        else:
            scores = np.array([r.predicted_iou for r in records], dtype=np.float32)
        records = [records[i] for i in box_nms(np.stack([r.box for r in records]), scores, body.box_nms_thresh)]
    if records and body.min_mask_region_area > 0:
        records = postprocess_small_regions(records, body.min_mask_region_area,
                                            max(body.box_nms_thresh, body.crop_nms_thresh), shape)
    out: list[dict] = []
    for r in records:
        x0, y0, x1, y1 = (int(v) for v in r.box)
        if not body.include_image_edge and _touches_all_borders((y0, x0, y1, x1), shape):
            continue
        ring = mask_to_ring(r.mask, (y0, x0))
        if ring is not None:
            out.append(feature(ring, len(out) - 1, r.predicted_iou, body.type.value))
    return out
