"""AIS mSA of model files / training checkpoints on the validation images of the small model's
datasets: MoNuSeg, CPM-15, GBM40 (the lists of ``docs/embedded_data.json``) and CoNSeP (the
tiles with nuclei of the seeded split by source image, as ``pathosam train --val-fraction 0.25
--seed 0`` draws it), with ``pathosam_small``'s registered post-processing (shape seeds, min
size 100) for every checkpoint, so that training runs compare with the shipped model.

    python benchmarks/bench_checkpoints.py pathosam_small runs/v2b/checkpoints/iter_1300.pt --json-dir out/
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def validation_sets(data: Path, val_list: Path) -> dict:
    """``{dataset name: Dataset}`` of the validation images."""
    from bench_consep import validation_tiles

    from pathosam.datasets import open_dataset

    by: dict[str, list[str]] = {}
    for n in json.loads(val_list.read_text())["val"]:
        d, k = n.split("/", 1)
        by.setdefault(d, []).append(k)
    sets = {d: open_dataset(data / d, "folder").select(items) for d, items in by.items()}
    tiles = validation_tiles(data / "consep")
    sets["consep"] = tiles.select([n for n in tiles.names if tiles[n].labels.max() > 0])
    return sets


def main() -> None:
    import torch

    import pathosam
    from pathosam import registry
    from pathosam.evaluation.grid_search import evaluate_automatic

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="registry names or files (training checkpoints too)")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("PATHOSAM_SHARED", str(ROOT.parent / "shared"))) / "data")
    ap.add_argument("--val-list", type=Path, default=ROOT / "docs" / "embedded_data.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-dir", type=Path, help="also write one JSON per checkpoint here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = dict(registry.get(registry.DEFAULT_MODEL).ais_defaults)
    sets = validation_sets(args.data, args.val_list)
    for ck in args.checkpoints:
        model = pathosam.load_model(ck, device="cpu", progress=False)
        res = {"checkpoint": ck, "params": params}
        for name, ds in sets.items():
            ev = evaluate_automatic(model, ds, "ais", progress=False, params=params)
            res[name] = round(float(ev.per_image["mSA"].mean()), 4)
        res["mean"] = round(float(np.mean([res[n] for n in sets])), 4)
        print(json.dumps(res), flush=True)
        if args.json_dir:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            (args.json_dir / (Path(ck).name + ".json")).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
