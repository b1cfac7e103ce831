"""The user-facing model: SAM + optional instance and semantic UNETR decoders.

``load_model`` builds it from a registry name or any reference checkpoint file; its methods
compute embeddings, decoder maps and prompted masks on numpy images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .embeddings import ImageEmbeddings, compute_embeddings
from .image import Normalization, prepare_input, transform_coords
from .models.checkpoint import (CheckpointError, as_tensor_dict, decoder_flavour, infer_architecture, load_state,
                                read_checkpoint)
from .models.sam import Sam, build_sam, config_from_state_dict
from .models.unetr import (BNMode, UNETRDecoder, embed_dim_from_state_dict, features_from_state_dict,
                           has_image_skip, postprocess_maps)
from .precision import LowPrecisionWeights, Precision, dtype_of, resolve_precision
from .semantic import ClassScheme
from .semantic import class_scheme as _class_scheme


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` or None: CUDA, then MPS, then CPU; anything else as ``torch.device``."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def build_decoder(
    state: dict[str, torch.Tensor], final_activation: str | None = "sigmoid",
    source: str | os.PathLike | None = None, what: str = "UNETR decoder weights",
) -> UNETRDecoder:
    """Build a UNETR decoder with the flavour, channel count and widths found in ``state`` and load it.

    The widths (``features``, coarse to fine) are the output channels of ``deconv1..4``'s convs
    and the embedding channels those of ``base``'s first conv: the reference decoder has
    (512, 256, 128, 64) on 256 channels, a narrower one smaller tensors under the same keys.
    Malformed weights (missing / unexpected keys, wrong shapes, non-floating or NaN/inf values)
    raise a CheckpointError naming ``source`` (the file) and ``what``.
    """

    def infer(state: dict) -> tuple[UNETRDecoder, str]:
        transposed, out_channels = decoder_flavour(state)
        features = features_from_state_dict(state)
        decoder = UNETRDecoder(out_channels, transposed, embed_dim=embed_dim_from_state_dict(state),
                               final_activation=final_activation, features=features,
                               image_skip=has_image_skip(state))
        arch = (f"{'transposed' if transposed else 'interpolating'} UNETR decoder, widths {features}, "
                f"{out_channels} channels{', image skip' if decoder.image_skip else ''}")
        return decoder, arch

    state = as_tensor_dict(state, what, source)
    decoder, arch = infer_architecture(infer, state, source, what)
    load_state(decoder, state, source, what, arch)
    return decoder.eval()


def build_sam_from_state(state: dict[str, torch.Tensor], source: str | os.PathLike | None = None) -> Sam:
    """A SAM of the architecture found in ``state`` (:func:`config_from_state_dict`) holding
    those weights; malformed weights raise a CheckpointError naming ``source`` (the file)."""
    what = "SAM weights"
    state = as_tensor_dict(state, what, source)
    config = infer_architecture(config_from_state_dict, state, source, what)
    sam = infer_architecture(lambda _: build_sam(config), state, source, what)
    arch = (f"ViT width {config.embed_dim}, depth {config.depth}, {config.num_heads} heads, "
            f"{config.img_size} px input")
    load_state(sam, state, source, what, arch)
    return sam.eval()


class PathoSAM:
    """SAM with an instance (AIS) decoder and optionally a semantic decoder.

    Prompts follow SAM: points (x, y), boxes (x0, y0, x1, y1), in pixels of the image given.

    ``precision``: "fp32" (default, the reference's arithmetic), "bf16", "fp16" (CUDA) or "auto"
    (:mod:`pathosam.precision`) of the image encoder and the UNETR decoders; change it with
    :meth:`set_precision`, or for one call with the ``precision=`` argument of the methods.
    Prompts are decoded in float32 (:meth:`predict`).
    """

    precision: Precision = "fp32"

    def __init__(
        self,
        sam: Sam,
        decoder: UNETRDecoder | None = None,
        semantic_decoder: UNETRDecoder | None = None,
        device: str | torch.device | None = None,
        name: str = "custom",
        model_id: str | None = None,
        ais_defaults: dict | None = None,
        precision: str = "fp32",
        class_scheme: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.sam = sam.eval().to(self.device)
        self.decoder = decoder.eval().to(self.device) if decoder is not None else None
        self.semantic_decoder = semantic_decoder.eval().to(self.device) if semantic_decoder is not None else None
        self.name = name
        self._model_id = model_id or name
        self._weights = LowPrecisionWeights([m for m in (self.sam.image_encoder, self.decoder, self.semantic_decoder)
                                             if m is not None])
        self.set_precision(precision)
        #: AIS post-processing parameters recommended for this model (the registry's), used
        #: instead of the reference's defaults where no value is given.
        self.ais_defaults = dict(ais_defaults or {})
        #: Name of the semantic decoder's class scheme (:data:`pathosam.semantic.SCHEMES`); None:
        #: decided by its number of classes (6 = PanNuke).
        self.class_scheme_name = class_scheme

    # ------------------------------------------------------------------ precision
    @property
    def model_id(self) -> str:
        """Identity of the weights (registry name or file hash) and, unless fp32, the precision
        (``...@bf16``): the key of embedding caches and slide runs."""
        return self._model_id if self.precision == "fp32" else f"{self._model_id}@{self.precision}"

    @model_id.setter
    def model_id(self, value: str) -> None:
        self._model_id = value

    def set_precision(self, precision: str) -> "PathoSAM":
        """Compute in ``precision`` from now on ("fp32", "bf16", "fp16" or "auto"; see
        :mod:`pathosam.precision`). The low-precision weights are converted once and kept; the
        float32 weights are never modified, so going back to fp32 is exact. Returns self."""
        resolved = resolve_precision(precision, self.device)
        self._weights.use(dtype_of(resolved))
        self.precision = resolved
        return self

    @contextlib.contextmanager
    def using(self, precision: str | None) -> Iterator["PathoSAM"]:
        """Context in which the model computes in ``precision`` (None: unchanged)."""
        if precision is None:
            yield self
            return
        before = self.precision
        self.set_precision(precision)
        try:
            yield self
        finally:
            self.set_precision(before)

    def save(self, path: str | os.PathLike, layout: str = "released") -> list[Path]:
        """Write the weights: ``"released"`` = plain SAM dict at ``path`` + ``<stem>_decoder<suffix>``
        (the published PathoSAM layout), or ``"model_and_decoder"`` = one
        ``{"model_state", "decoder_state"}`` file (micro-sam's export). Returns the files written."""
        from .models.checkpoint import write_model_and_decoder, write_released

        with self.using("fp32"):
            sam = {k: v.detach().cpu().contiguous() for k, v in self.sam.state_dict().items()}
            dec = None
            if self.decoder is not None:
                dec = {k: v.detach().cpu().contiguous() for k, v in self.decoder.state_dict().items()}
        if layout == "released":
            return [p for p in write_released(sam, dec, path) if p is not None]
        if layout == "model_and_decoder":
            return [write_model_and_decoder(sam, dec, path)]
        raise ValueError(f"layout must be 'released' or 'model_and_decoder', got {layout!r}")

    # ------------------------------------------------------------------ geometry
    @property
    def img_size(self) -> int:
        """Model input size: images (tiles) are resized to this longest side (1024 for SAM)."""
        return self.sam.img_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image embedding: (256, img_size / 16, img_size / 16); (256, 64, 64) for SAM."""
        return self.sam.embedding_shape

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(h, w) of mask prompts / low-res logits: 4 x the embedding grid, (256, 256) for SAM."""
        return self.sam.mask_input_size

    def prepare_input(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """:func:`pathosam.image.prepare_input` at this model's input size."""
        return prepare_input(rgb, self.img_size)

    # ------------------------------------------------------------------ embeddings
    def _preprocess(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded model input of prepared inputs (:meth:`prepare_input`)."""
        pin = self.device.type == "cuda"  # pinned host memory: asynchronous copies to the GPU
        return torch.cat([self.sam.preprocess((t.pin_memory() if pin else t).to(self.device, non_blocking=pin)[None])
                          for t in batch])

    @torch.inference_mode()
    def encode(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings (B, *embedding_shape) on the model's device of prepared inputs (:meth:`prepare_input`)."""
        return self.sam.image_encoder(self._preprocess(batch)).float()

    def needs_image(self, what: str = "instance") -> bool:
        """Whether the ``what`` decoder also reads the input image (``image_skip``), so decoder
        maps need the image besides the embeddings."""
        decoder = self.decoder if what == "instance" else self.semantic_decoder
        return bool(getattr(decoder, "image_skip", False))

    def _encode(self, batch: list[torch.Tensor]) -> np.ndarray:
        return self.encode(batch).cpu().numpy()

    def embed(
        self,
        image: np.ndarray,
        tile_shape: tuple[int, int] | None = None,
        halo: tuple[int, int] | None = None,
        batch_size: int = 1,
        normalization: Normalization = "none",
        cache: str | os.PathLike | None = None,
        progress: bool = True,
        precision: str | None = None,
    ) -> ImageEmbeddings:
        """Image embeddings, untiled (``tile_shape=None``) or tiled with ``halo`` (rows, cols);
        ``precision``: for this call (None: the model's, :meth:`set_precision`)."""
        with self.using(precision):
            return compute_embeddings(
                self._encode, image, self.model_id, tile_shape, halo, batch_size, normalization, cache, progress,
                img_size=self.img_size, feature_shape=self.embedding_shape,
            )

    # ------------------------------------------------------------------ decoder maps
    def decode(
        self, features: np.ndarray | torch.Tensor, input_sizes, original_sizes, what: str = "instance",
        bn_mode: BNMode = "per_tile", inputs: list[torch.Tensor] | None = None,
    ) -> list[np.ndarray]:
        """Decoder maps of a batch of embeddings (B, *embedding_shape), one float32 (C, h, w) array per
        item at its ``original_sizes[i]`` (H, W); ``what`` = "instance" (C=3) or "semantic" (C=6).
        ``inputs``: the prepared inputs the embeddings came from (as given to :meth:`encode`);
        needed when :meth:`needs_image`."""
        decoder = self.decoder if what == "instance" else self.semantic_decoder
        if decoder is None:
            raise RuntimeError(f"this model has no {what} decoder loaded")
        with torch.inference_mode():
            feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
            image = None
            if self.needs_image(what):
                if inputs is None:
                    raise ValueError(f"the {what} decoder of {self.name} reads the input image: pass inputs=")
                image = self._preprocess(list(inputs))
            maps = decoder(feats.to(self.device), bn_mode, image)
            return [postprocess_maps(maps[j : j + 1], input_sizes[j], original_sizes[j])[0].float().cpu().numpy()
                    for j in range(maps.shape[0])]

    def _maps(
        self, what: str, emb: ImageEmbeddings, bn_mode: BNMode, batch_size: int, progress: bool,
        image: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 (C, H, W) ``what`` maps of the image of ``emb`` (:func:`pathosam.inference.maps_from_embeddings`)."""
        from .embeddings import iter_block_inputs
        from .inference import maps_from_embeddings

        decoder = self.decoder if what == "instance" else self.semantic_decoder
        if decoder is None:
            raise RuntimeError(f"this model has no {what} decoder loaded")
        block_inputs = None
        if self.needs_image(what):
            if image is None:
                raise ValueError(f"the {what} decoder of {self.name} reads the input image: pass image=")
            block_inputs = iter_block_inputs(image, emb, self.img_size)
        return maps_from_embeddings(self, emb, what, bn_mode, batch_size, progress, block_inputs)

    def instance_maps(
        self, emb: ImageEmbeddings, bn_mode: BNMode = "per_tile", batch_size: int = 1, progress: bool = True,
        image: np.ndarray | None = None, precision: str | None = None,
    ) -> np.ndarray:
        """float32 (3, H, W): foreground probability, centre distance, boundary distance.
        ``image``: the image of ``emb``, needed when :meth:`needs_image`; ``precision``: for
        this call (None: the model's)."""
        with self.using(precision):
            return self._maps("instance", emb, bn_mode, batch_size, progress, image)

    @property
    def class_scheme(self) -> ClassScheme | None:
        """The classes of the semantic decoder's maps (None without one): the registered scheme
        (CoNSeP for ``pathosam_small``'s class head), else PanNuke for 6 maps."""
        if self.semantic_decoder is None:
            return None
        return _class_scheme(self.semantic_decoder.out_channels, self.class_scheme_name)

    def semantic_maps(
        self, emb: ImageEmbeddings, bn_mode: BNMode = "per_tile", batch_size: int = 1, progress: bool = True,
        image: np.ndarray | None = None, precision: str | None = None,
    ) -> np.ndarray:
        """float32 (C, H, W) per-class sigmoid scores (channel 0 background; classes of
        :attr:`class_scheme`, e.g. 6 = background + 5 PanNuke classes); argmax = class.
        ``image``: the image of ``emb``, needed when :meth:`needs_image`; ``precision``: as
        :meth:`instance_maps`."""
        with self.using(precision):
            return self._maps("semantic", emb, bn_mode, batch_size, progress, image)

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def predict(
        self,
        emb: ImageEmbeddings,
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask: bool = False,
        index: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment one object from prompts on an untiled embedding (or tile ``index``).

        ``points``: (N, 2) (x, y) pixels; ``point_labels``: (N,) 1 = object, 0 = background;
        ``box``: (x0, y0, x1, y1) pixels; ``mask_input``: (1, 256, 256) low-res logits from a
        previous call (``(1, *mask_input_size)``). Returns masks (C, H, W) bool, IoU predictions
        (C,), low-res logits (C, 256, 256) (``mask_input_size``); C = 3 with ``multimask`` else 1.
        The prompt encoder and mask decoder always compute in float32 (bf16 moved masks of the
        reference model to IoU 0.969, below the 0.97 bar; they take milliseconds); a bf16
        embedding (``embed(precision="bf16")``) is what speeds prompting up.
        """
        orig = emb.original_sizes[index]
        in_size = emb.input_sizes[index]
        dev = self.device
        size = self.img_size
        low = self.mask_input_size
        pts = None
        if points is not None:
            coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            if point_labels is None:
                raise ValueError("point_labels are required with points")
            labels = np.asarray(point_labels).reshape(-1)
            if len(labels) != len(coords):
                raise ValueError(f"{len(coords)} points but {len(labels)} point_labels")
            coords = transform_coords(coords, orig, size)
            pts = (torch.as_tensor(coords, dtype=torch.float32, device=dev)[None],
                   torch.as_tensor(labels, dtype=torch.int64, device=dev)[None])
        boxes = None
        if box is not None:
            b = transform_coords(np.asarray(box, dtype=np.float64).reshape(2, 2), orig, size).reshape(1, 4)
            boxes = torch.as_tensor(b, dtype=torch.float32, device=dev)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(np.asarray(mask_input, dtype=np.float32), device=dev).reshape(1, 1, *low)
        if pts is None and boxes is None and masks is None:
            raise ValueError("give at least one prompt: points, box or mask_input")
        low_res, iou = self._decode_prompts(emb, index, pts, boxes, masks, multimask)
        full = Sam.postprocess_masks(low_res, in_size, orig, size)
        return (full[0] > 0).cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def _decode_prompts(self, emb: ImageEmbeddings, index: int, points, boxes, masks, multimask: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder (float32 whatever the precision) on entry ``index`` of
        ``emb``: low-res logits (B, C, h, w) and IoU predictions (B, C)."""
        sparse, dense = self.sam.prompt_encoder(points, boxes, masks)
        feats = torch.from_numpy(emb.feature(index)).to(self.device)
        return self.sam.mask_decoder(
            feats, self.sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=multimask
        )

    @torch.inference_mode()
    def predict_batch(
        self,
        emb: ImageEmbeddings,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        index: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment B objects in one mask-decoder call (same result as B calls of :meth:`predict`).

        The image embedding is shared by all B prompts (SAM's batched ``predict_torch``); every
        object must have the same number of points.

        Parameters
        ----------
        emb : ImageEmbeddings
            Untiled embedding (or tiled, with tile ``index``); prompts are in that entry's pixels.
        points : numpy.ndarray, optional
            (B, N, 2) point coordinates, (x, y) order, pixels.
        point_labels : numpy.ndarray, optional
            (B, N) 1 = object, 0 = background; required with ``points``.
        boxes : numpy.ndarray, optional
            (B, 4) boxes (x0, y0, x1, y1), pixels.
        mask_input : numpy.ndarray, optional
            (B, 1, 256, 256) or (B, 256, 256) low-res logits from a previous call
            (``mask_input_size`` for models of another input size).
        multimask : bool
            Predict SAM's three masks per object instead of one.
        index : int
            Tile index of a tiled embedding (0 when untiled).

        Returns
        -------
        masks : numpy.ndarray
            (B, C, H, W) bool at the entry's original size (H, W); C = 3 with ``multimask`` else 1.
        iou : numpy.ndarray
            (B, C) float32 predicted IoUs.
        low_res : numpy.ndarray
            (B, C, 256, 256) float32 low-res logits (``mask_input_size``).
        """
        orig = emb.original_sizes[index]
        in_size = emb.input_sizes[index]
        dev = self.device
        size = self.img_size
        sizes = []
        pts = None
        if points is not None:
            coords = np.asarray(points, dtype=np.float64)
            if coords.ndim != 3 or coords.shape[2] != 2:
                raise ValueError(f"points must be (B, N, 2) (x, y), got shape {coords.shape}")
            if point_labels is None:
                raise ValueError("point_labels are required with points")
            labels = np.asarray(point_labels)
            if labels.shape != coords.shape[:2]:
                raise ValueError(f"point_labels must be (B, N) = {coords.shape[:2]}, got shape {labels.shape}")
            coords = transform_coords(coords, orig, size)
            pts = (torch.as_tensor(coords, dtype=torch.float32, device=dev),
                   torch.as_tensor(labels, dtype=torch.int64, device=dev))
            sizes.append(coords.shape[0])
        tboxes = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes must be (B, 4) (x0, y0, x1, y1), got shape {b.shape}")
            b = transform_coords(b.reshape(-1, 2, 2), orig, size).reshape(-1, 4)
            tboxes = torch.as_tensor(b, dtype=torch.float32, device=dev)
            sizes.append(b.shape[0])
        tmasks = None
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            tmasks = torch.as_tensor(m, device=dev).reshape(-1, 1, *self.mask_input_size)
            sizes.append(tmasks.shape[0])
        if not sizes:
            raise ValueError("give at least one prompt: points, boxes or mask_input")
        if len(set(sizes)) != 1:
            raise ValueError(f"points, boxes and mask_input disagree on the batch size: {sizes}")
        low_res, iou = self._decode_prompts(emb, index, pts, tboxes, tmasks, multimask)
        # upscale one object at a time: (B, C, 1024, 1024) floats at once would be large
        masks = np.stack([(Sam.postprocess_masks(low_res[j : j + 1], in_size, orig, size)[0] > 0).cpu().numpy()
                          for j in range(low_res.shape[0])])
        return masks, iou.float().cpu().numpy(), low_res.float().cpu().numpy()


def load_model(
    model: str | os.PathLike = "pathosam_small",
    decoder: str | os.PathLike | None = None,
    semantic_decoder: str | os.PathLike | bool | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    precision: str = "fp32",
    class_scheme: str | None = None,
) -> PathoSAM:
    """Load a model by registry name (downloaded/cached) or from reference checkpoint files.

    ``model``: registry name (``pathosam models list``; default the small model shipped with
    the package, ``"vit_b_histopathology"`` for the published PathoSAM) or a file in any reference layout (a
    training checkpoint or ``{model_state, decoder_state}`` file brings its decoder along).
    ``decoder``: a separate decoder file; ``semantic_decoder``: a file, or True to use the
    registered semantic decoder of a registry model. ``precision``: "fp32" (default, the
    reference's arithmetic), "bf16", "fp16" (CUDA) or "auto" (:mod:`pathosam.precision`).
    ``class_scheme``: the classes of a semantic decoder file (``"pannuke"``, ``"consep"``;
    default: the registry's for a registered decoder, else PanNuke for 6 classes).
    """
    from . import registry

    resolve_precision(precision, resolve_device(device))  # a bad precision fails before any reading
    name = str(model)
    model_id = None
    ais_defaults: dict = {}
    if registry.is_registered(name) and not Path(name).exists():
        entry = registry.get(name)
        ais_defaults = registry.ais_defaults(entry)
        sam_path = registry.fetch(name, progress=progress)
        model_id = f"{name}:{entry.hash}"
        if decoder is None and entry.decoder:
            decoder = registry.fetch(entry.decoder, progress=progress)
        if semantic_decoder is True:
            if not entry.semantic_decoder:
                raise ValueError(f"model {name!r} has no registered semantic decoder")
            semantic_decoder = registry.fetch(entry.semantic_decoder, progress=progress)
    else:
        sam_path = Path(name)
        if not sam_path.exists():
            raise FileNotFoundError(
                f"{name!r} is neither a registered model name ({', '.join(registry.names())}) nor an existing file"
            )
        if semantic_decoder is True:
            raise ValueError("semantic_decoder=True needs a registry model; pass the decoder file instead")
    ck = read_checkpoint(sam_path)  # before hashing: a directory or unreadable file gets a CheckpointError
    if model_id is None:
        digest = registry.file_hash(sam_path)
        model_id = f"{sam_path.name}:{digest}"
        ais_defaults = registry.ais_defaults(registry.entry_of_file(digest))  # a registered model's file
    if ck.sam_state is None:
        raise CheckpointError(f"{sam_path}: holds no SAM weights (layout {ck.layout}); is it a decoder file?")
    # the (small) decoders first: a bad decoder file fails before a ViT-H is built
    dec_state, dec_source = ck.decoder_state, sam_path
    if decoder is not None:
        dck = read_checkpoint(decoder)
        if dck.decoder_state is None:
            raise CheckpointError(f"{decoder}: holds no UNETR decoder weights (layout {dck.layout})")
        dec_state, dec_source = dck.decoder_state, decoder
        model_id += f"+{Path(decoder).name}:{registry.file_hash(decoder)}"
    inst = sem = None
    if dec_state is not None:
        d = build_decoder(dec_state, source=dec_source)
        if d.out_channels == 3:
            inst = d
        else:
            sem = d
    if semantic_decoder not in (None, False):
        sck = read_checkpoint(semantic_decoder)
        if sck.decoder_state is None:
            raise CheckpointError(f"{semantic_decoder}: holds no UNETR decoder weights")
        sem = build_decoder(sck.decoder_state, source=semantic_decoder, what="semantic decoder weights")
        digest = registry.file_hash(semantic_decoder)
        model_id += f"+sem:{digest}"
        sem_entry = registry.entry_of_file(digest)
        class_scheme = class_scheme or (sem_entry.class_scheme if sem_entry is not None else None)
    if sem is not None:
        try:
            _class_scheme(sem.out_channels, class_scheme)  # a scheme that does not fit fails here
        except ValueError as e:
            raise ValueError(f"{semantic_decoder or sam_path}: {e}") from None
    sam = build_sam_from_state(ck.sam_state, sam_path)
    return PathoSAM(sam, inst, sem, device=device, name=Path(name).name, model_id=model_id,
                    ais_defaults=ais_defaults, precision=precision, class_scheme=class_scheme)
