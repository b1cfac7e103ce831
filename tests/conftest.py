"""Shared fixtures: where the reference vectors and real data are, and the tiny reference model.

The shared folder is found through ``PATHOSAM_SHARED`` (default ``../shared`` next to the
project root); tests that need it skip with a clear reason when it is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))
VECTORS = SHARED / "vectors"
DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference material not found at {path} (set PATHOSAM_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small-tensor tests: several times faster than two on a
    shared 2-core machine (and immune to OpenMP spin-waiting). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def vectors() -> Path:
    return _need(VECTORS)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def tiny_files(vectors: Path, tmp_path_factory) -> dict[str, Path]:
    """The six reference checkpoint files, extracted once and checked against their sha256."""
    info = json.loads((vectors / "tiny_model.json").read_text())["files"]
    out = tmp_path_factory.mktemp("tiny_checkpoints")
    with tarfile.open(vectors / "tiny_checkpoints.tar.xz", "r:xz") as tar:
        tar.extractall(out, filter="data")
    files = {}
    for name, meta in info.items():
        p = out / name
        h = hashlib.sha256(p.read_bytes()).hexdigest()
        assert h == meta["sha256"], f"{name}: extracted file does not match its recorded sha256"
        files[name] = p
    return files


@pytest.fixture(scope="session")
def tiny_model(tiny_files):
    import pathosam

    return pathosam.load_model(
        tiny_files["tiny_sam.pt"],
        decoder=tiny_files["tiny_sam_decoder.pt"],
        semantic_decoder=tiny_files["tiny_decoder_semantic_fp16.pt"],
        device="cpu",
    )


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def decode_maps(q: np.ndarray) -> np.ndarray:
    """uint16-quantised reference maps -> float32."""
    return q.astype(np.float32) / 65535
