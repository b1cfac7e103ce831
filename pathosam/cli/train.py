"""``pathosam train``: finetune (or train) PathoSAM on annotated images."""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pathosam train``."""
    from .common import pair

    p = subparsers.add_parser(
        "train",
        help="finetune PathoSAM on annotated images (micro-sam objective, or the semantic head)",
        description="Train with micro-sam's joint objective (iterative prompting + the UNETR AIS decoder) or, "
                    "with --semantic, the semantic (class) head, one map per class of the data (PanNuke 6, CoNSeP 5, "
                    "background included). Checkpoints, log.csv (and TensorBoard if "
                    "installed) go to RUN; --resume continues a stopped run exactly; at the end the best "
                    "weights are exported to RUN/export (released layout and {model_state, decoder_state}).",
    )
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="training data folder(s) (any supported dataset layout)")
    p.add_argument("--val", nargs="+", metavar="DIR",
                   help="validation data (default: a seeded --val-fraction of each --data folder)")
    p.add_argument("--format", default="auto", help="dataset format of --data/--val (default: detect)")
    p.add_argument("--split", help="split of --data to train on")
    p.add_argument("--val-split", help="split of --val (or of --data) to validate on")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of --data held out when --val is "
                                                                   "not given (0.1)")
    p.add_argument("--from", dest="init", default="vit_b_histopathology", metavar="MODEL",
                   help="starting weights: registry name or file (default vit_b_histopathology), or a new "
                        "random model 'new:WIDTH,DEPTH,IMG_SIZE,DECODER_FEATURES' (e.g. new:96,4,256,16)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--decoder", help="separate AIS decoder file for --from")
    p.add_argument("--image-skip", action="store_true",
                   help="give the AIS decoder a full-resolution branch on the input image (new branch starts "
                        "at zero, so a trained decoder computes the same maps before training)")
    p.add_argument("--input-size", type=int, metavar="PX",
                   help="change the model input size of --from (position embeddings interpolated), e.g. "
                        "256 -> 512 to train on patches twice as large at the same scale")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (checkpoints, logs, export)")
    p.add_argument("--semantic", action="store_true", help="train the semantic (class) head instead")
    p.add_argument("--iterations", type=int, default=1000, help="training iterations (1000)")
    p.add_argument("--batch-size", type=int, help="patches per iteration (joint 2, semantic 2)")
    p.add_argument("--patch-shape", type=pair, default=(512, 512), help="random crop size (512)")
    p.add_argument("--lr", type=float, help="learning rate (joint 1e-5, semantic 1e-4)")
    p.add_argument("--n-objects", type=int, default=25, help="joint: objects prompted per image (25)")
    p.add_argument("--sub-iterations", type=int, default=8, help="joint: prompt iterations per batch (8)")
    p.add_argument("--no-decoder", action="store_true", help="joint: train SAM only, not the AIS decoder")
    p.add_argument("--freeze-encoder", action="store_true", help="semantic: train the decoder only")
    p.add_argument("--decoder-init", choices=["scratch", "pretrained"], default="pretrained",
                   help="semantic: new decoder from scratch or from the AIS decoder (default)")
    p.add_argument("--class-weights", default="auto",
                   help="semantic: auto (from the data's class frequencies, the reference's rule) | reference "
                        "([1,1,7,6,10,8]) | none | w0,..,w5")
    p.add_argument("--oversample", action="store_true", help="semantic: oversample patches with rare classes")
    p.add_argument("--validate-every", type=int, default=100, help="iterations between validations (100)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="iterations between kept checkpoints (500)")
    p.add_argument("--val-patches", type=int, default=8, help="fixed validation patches (8)")
    p.add_argument("--dataset-weights", type=float, nargs="+", metavar="W",
                   help="joint: share of training patches per --data folder, one weight each (default: every "
                        "image equally likely, so a folder of many small tiles dominates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stain-jitter", action="store_true", help="random HED stain jitter")
    p.add_argument("--scale-jitter", type=_scale_range, metavar="MIN,MAX",
                   help="joint: random zoom of the training patches, factor log-uniform in [MIN, MAX] "
                        "(e.g. 0.8,1.5; validation patches are not zoomed)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue RUN from its latest checkpoint")
    p.add_argument("-d", "--device", default="auto", help="cpu, cuda, mps or auto (default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


class _Concat:
    """Several datasets as one sequence of samples (names prefixed by the dataset's folder)."""

    def __init__(self, parts) -> None:
        self.parts = list(parts)
        self.index = [(k, i) for k, p in enumerate(self.parts) for i in range(len(p))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j):
        k, i = self.index[j]
        return self.parts[k][i]

    @property
    def names(self) -> list[str]:
        return [f"{p.name}/{n}" for p in self.parts for n in p.names]

    def image_weights(self, dataset_weights) -> tuple[float, ...]:
        """Per-image weights giving part k the share ``dataset_weights[k]`` (uniform inside it)."""
        return tuple(w / len(p) for w, p in zip(dataset_weights, self.parts) for _ in range(len(p)))


def _datasets(args):
    from .common import UsageError
    from ..datasets import open_dataset, split_names

    trains, vals = [], []
    for d in args.data:
        ds = open_dataset(d, args.format, split=args.split)
        if args.val or args.val_split:
            trains.append(ds)
            if args.val_split and not args.val:
                vals.append(open_dataset(d, args.format, split=args.val_split))
            continue
        parts = split_names(ds.names, fractions=(args.val_fraction, 0.0), seed=args.seed, groups=ds.sources)
        trains.append(ds.select(parts["train"]))
        vals.append(ds.select(parts["val"]))
    for d in args.val or []:
        vals.append(open_dataset(d, args.format, split=args.val_split))
    train, val = _Concat(trains), _Concat(vals)
    if len(train) == 0:
        raise UsageError(f"{' '.join(args.data)}: no training images")
    if not args.val:
        overlap = set(train.names) & set(val.names)
        if overlap:
            raise UsageError(f"training and validation images overlap: {sorted(overlap)[:5]}")
    return train, val


def _initial_model(args):
    from .common import UsageError
    from ..predictor import load_model

    if args.init.startswith("new:"):
        from ..training.models import new_model

        try:
            width, depth, img, feats = (int(v) for v in args.init[4:].split(","))
        except ValueError:
            raise UsageError(f"--from {args.init!r}: expected new:WIDTH,DEPTH,IMG_SIZE,DECODER_FEATURES") from None
        return new_model(width, depth, img_size=img, decoder_features=feats, seed=args.seed,
                         name=f"pathosam-{width}x{depth}-{img}")
    return load_model(args.init, decoder=args.decoder, device="cpu", progress=not args.quiet)


def _train(args: argparse.Namespace) -> int:
    import torch

    from .common import UsageError, checked_output_dir

    if args.semantic and args.scale_jitter:
        raise UsageError("--scale-jitter is for the joint training, not --semantic")
    if args.dataset_weights is not None:
        if args.semantic:
            raise UsageError("--dataset-weights is for the joint training, not --semantic")
        if len(args.dataset_weights) != len(args.data) or min(args.dataset_weights) < 0 or not sum(args.dataset_weights) > 0:
            raise UsageError(f"--dataset-weights: one non-negative weight per --data folder ({len(args.data)}), "
                             f"not all zero; got {args.dataset_weights}")
    if args.threads:
        torch.set_num_threads(args.threads)
    checked_output_dir(args.out)
    train, val = _datasets(args)
    model = _initial_model(args)
    if args.image_skip:
        if model.decoder is None:
            raise UsageError("--image-skip needs a model with an AIS decoder")
        model.decoder = model.decoder.with_image_skip()
    if args.input_size and args.input_size != model.sam.img_size:
        from ..models import with_input_size

        try:
            model.sam = with_input_size(model.sam, args.input_size)
        except ValueError as e:
            raise UsageError(f"--input-size: {e}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps({"train": train.names, "val": val.names}, indent=1))
    if args.semantic:
        from ..training.semantic_trainer import train_semantic
        from ..training.semantic_setup import SemanticConfig

        cfg = SemanticConfig(
            iterations=args.iterations, batch_size=args.batch_size, patch_shape=tuple(args.patch_shape),
            lr=args.lr or 1e-4, freeze_encoder=args.freeze_encoder, decoder_init=args.decoder_init,
            num_classes=_num_classes(train),
            class_weights=_class_weights(args.class_weights), oversample=args.oversample,
            validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
            val_patches=args.val_patches, seed=args.seed, amp=not args.no_amp,
        )
        result = train_semantic(model, train, val, out, cfg, device=args.device, progress=not args.quiet,
                                resume=args.resume)
        last = result["validation"][-1] if result.get("validation") else {}
        print(f"trained the semantic head {result['iteration']} iterations on {len(train)} images (validation: "
              f"{len(val)}); best validation loss {result['best_metric']:.4f}"
              + (f", mean class dice {last['dice_mean']:.3f}" if "dice_mean" in last else "")
              + f"; exported {result['files'].get('semantic_decoder')}")
        return 0

    from ..training.trainer import JointTrainer, TrainConfig

    cfg = TrainConfig(
        iterations=args.iterations, batch_size=args.batch_size or 2, patch_shape=tuple(args.patch_shape),
        n_objects=args.n_objects, n_sub_iterations=args.sub_iterations, lr=args.lr or 1e-5,
        train_decoder=not args.no_decoder, validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every, val_patches=args.val_patches, seed=args.seed,
        amp=not args.no_amp, stain_jitter=args.stain_jitter, scale_range=args.scale_jitter,
        sample_weights=None if args.dataset_weights is None else train.image_weights(args.dataset_weights),
    )
    trainer = JointTrainer(model, train, val, out, cfg, device=args.device)
    state = trainer.fit(resume=args.resume, progress=not args.quiet)
    files = trainer.export()
    best = f"{state.best_metric:.4f}" if state.history else "n/a (no validation)"
    print(f"trained {state.iteration} iterations on {len(train)} images (validation: {len(val)}); best "
          f"validation metric {best}; exported {files['sam']}" +
          (f" + {files['decoder'].name}" if "decoder" in files else ""), file=sys.stdout)
    return 0


def _num_classes(train: _Concat) -> int:
    """Classes (background included) of the training data's class scheme (6 = PanNuke's when the
    data names none); all folders must agree."""
    from .common import UsageError

    schemes = {getattr(p, "class_names", None) for p in train.parts}
    if schemes == {None}:  # class maps without names: PanNuke's 6 classes, as always
        return 6
    if len(schemes) > 1:
        raise UsageError(f"--semantic: the --data folders use different class schemes: {sorted(schemes)}")
    return len(schemes.pop())


def _scale_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two numbers), got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX, got {text!r}")
    return (lo, hi)


def _class_weights(text: str):
    if text in ("reference", "auto", "none"):
        return text
    return [float(v) for v in text.split(",")]
