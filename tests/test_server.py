"""`pathosam serve`: a real server process on localhost, driven like the QuPath SAM extension.

The client below sends the requests of qupath-extension-sam v0.9.1 byte for byte as
``reference/samapi-qupath.md`` section 3 reconstructs them (Gson: compact, fields in Java
declaration order, nulls omitted, ``=`` escaped as ``\\u003d``; headers ``accept`` and
``Content-Type: application/json; charset=utf-8``) and parses the answers as the extension does
(section 2.5). The server runs the tiny reference model, allowed at start-up; nothing leaves
localhost.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathosam.server.geometry import longest_contour_numpy, mask_features, mask_to_ring
from pathosam.server.images import decode_image
from pathosam.server.errors import RequestError

from .conftest import read_png

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["vit_h", "vit_l", "vit_b", "vit_t", "sam2_l", "sam2_bp", "sam2_s", "sam2_t", "sam3"]
PATHOSAM_VIT_B_URL = "https://owncloud.gwdg.de/index.php/s/sBB4H8CTmIoBZsQ/download"
ZENODO_LM_URL = "https://zenodo.org/record/8250281/files/vit_b_lm.pth?download=1"
MAX_REQUEST_MB = 1
MAX_IMAGE_PIXELS = 300_000


# ------------------------------------------------------------------------------------ the client


def gson(obj) -> bytes:
    """JSON as QuPath's Gson writes it: compact, ASCII, HTML characters escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    for ch in "=<>&'":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text.encode()


def png_b64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Client:
    """One connection per request, as the extension's HttpClient 5 (a new client per call)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 300) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body, headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, str, bytes]:
        return self.request("GET", path)

    def post(self, path: str, body) -> tuple[int, str, bytes]:
        data = body if isinstance(body, bytes) else gson(body)
        return self.request("POST", path, data, {"accept": "application/json",
                                                 "Content-Type": "application/json; charset=utf-8"})


def prompt_body(type_, b64img, bbox=None, points=None, labels=None, multimask=False, url=None) -> dict:
    """``SAMPromptParameters`` in Java field order, nulls omitted."""
    body = {"type": type_}
    if bbox is not None:
        body["bbox"] = bbox
    body["b64img"] = b64img
    if points is not None:
        body["point_coords"], body["point_labels"] = points, labels
    body["multimask_output"] = multimask
    if url is not None:
        body["checkpoint_url"] = url
    return body


def automask_body(type_, b64img, url, output_type="Multi-mask (smallest)", points_per_side=16, **over) -> dict:
    """``SAMAutoMaskParameters`` with the extension's GUI defaults, in Java field order."""
    body = {"type": type_, "b64img": b64img, "points_per_side": points_per_side, "points_per_batch": 64,
            "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "stability_score_offset": 1.0,
            "box_nms_thresh": 0.2, "crop_n_layers": 0, "crop_nms_thresh": 0.7,
            "crop_overlap_ratio": 0.3413333333333333, "crop_n_points_downscale_factor": 1,
            "min_mask_region_area": 0, "output_type": output_type, "include_image_edge": False,
            "checkpoint_url": url}
    body.update(over)
    return body


def parse_features(status: int, content_type: str, body: bytes, width: int, height: int, sam_model: str) -> list:
    """What the extension accepts (section 2.5): a JSON array of Features (or a collection / one
    Feature), each with a Polygon geometry, a closed ring inside the half-pixel frame of the sent
    image, numeric ``quality`` and integer ``object_idx``."""
    assert status == 200, body[:500]
    assert content_type.startswith("application/json")
    text = body.decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text
    orders = []

    def keep_order(pairs):
        if pairs and pairs[0] == ("type", "Feature"):
            orders.append([k for k, _ in pairs])
        return dict(pairs)

    data = json.loads(text, object_pairs_hook=keep_order)
    features = data if isinstance(data, list) else data.get("features", [data])
    assert len(orders) == len(features)
    assert all(o == ["type", "geometry", "properties"] for o in orders), "samapi's key order, no id"
    for f in features:
        assert f["type"] == "Feature"
        geom = f["geometry"]
        assert geom is not None and geom["type"] == "Polygon" and len(geom["coordinates"]) == 1
        ring = np.asarray(geom["coordinates"][0], dtype=float)
        assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 5
        assert np.array_equal(ring[0], ring[-1]), "ring must be closed"
        assert ring.min() >= -0.5 and ring[:, 0].max() <= width - 0.5 and ring[:, 1].max() <= height - 0.5
        assert np.all((ring * 2) == np.round(ring * 2)), "samapi vertices lie on the half-pixel lattice"
        props = f["properties"]
        assert set(props) == {"object_idx", "label", "quality", "sam_model"}
        assert isinstance(props["object_idx"], int) and not isinstance(props["object_idx"], bool)
        assert isinstance(props["quality"], (int, float)) and not isinstance(props["quality"], bool)
        assert props["label"] == "object" and props["sam_model"] == sam_model
    return features


# ------------------------------------------------------------------------------------ server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], workdir: Path, offline: bool = True) -> None:
        self.port = free_port()
        env = {**os.environ, "PATHOSAM_CACHE_DIR": str(workdir / "cache"), "PYTHONPATH": str(ROOT),
               "PATHOSAM_OFFLINE": "1" if offline else ""}
        self.log = open(workdir / f"server-{self.port}.log", "w+b")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pathosam", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "-d", "cpu", "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.client = Client(self.port)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client.request("GET", "/sam/version/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def rss_kib(self) -> int | None:
        """Resident memory of the server process (Linux /proc), None where unavailable."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def files(tiny_files, tmp_path_factory):
    """tiny SAM + decoder (AIS automask) and a copy of the SAM weights without decoder (AMG)."""
    d = tmp_path_factory.mktemp("served")
    plain = d / "tiny_sam_plain.pt"
    shutil.copyfile(tiny_files["tiny_sam.pt"], plain)
    return {"sam": tiny_files["tiny_sam.pt"], "decoder": tiny_files["tiny_sam_decoder.pt"], "plain": plain,
            "workdir": d}


@pytest.fixture(scope="module")
def server(files):
    srv = ServerProcess(["--model", str(files["sam"]), "--decoder", str(files["decoder"]),
                         "--model", str(files["plain"]), "--max-request-mb", str(MAX_REQUEST_MB),
                         "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--embedding-cache", "3"],
                        files["workdir"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def urls(files):
    return {"sam": Path(files["sam"]).resolve().as_uri(), "plain": Path(files["plain"]).resolve().as_uri()}


@pytest.fixture(scope="module")
def images(vectors):
    """Two different RGB images (as sent by the extension) and their base64 PNGs."""
    a = read_png(vectors / "inputs/gbm40_512.png")[100:260, 120:320]
    b = read_png(vectors / "inputs/monuseg_512.png")[200:360, 40:240]
    return {"a": (a, png_b64(a)), "b": (b, png_b64(b))}


# ------------------------------------------------------------------------------------ unit: geometry, images


def samapi_mask_to_ring(mask):
    """samapi's ``mask_to_geometry`` ring, verbatim (utils.py)."""
    from skimage import measure

    mask = np.pad(mask, 1)
    contours = measure.find_contours(mask, 0.5)
    index = 0 if len(contours) == 1 else int(np.argmax([len(c) for c in contours]))
    contour = contours[index] - 1
    return contour[:, np.argsort([1, 0])].tolist()


def test_geometry_is_samapis():
    # E3's ring (samapi-qupath.md section 3): the ~9x6 px ellipse it came from gives it exactly
    e3 = [[217.0, 118.5], [216.0, 118.5], [215.0, 118.5], [214.0, 118.5], [213.0, 118.5], [212.5, 118.0],
          [212.0, 117.5], [211.5, 117.0], [211.0, 116.5], [210.5, 116.0], [210.5, 115.0], [211.0, 114.5],
          [211.5, 114.0], [212.0, 113.5], [212.5, 113.0], [213.0, 112.5], [214.0, 112.5], [215.0, 112.5],
          [216.0, 112.5], [217.0, 112.5], [217.5, 113.0], [218.0, 113.5], [218.5, 114.0], [219.0, 114.5],
          [219.5, 115.0], [219.5, 116.0], [219.0, 116.5], [218.5, 117.0], [218.0, 117.5], [217.5, 118.0],
          [217.0, 118.5]]
    mask = np.zeros((300, 300), bool)
    for row, (c0, c1) in zip(range(113, 119), [(213, 217), (212, 218), (211, 219), (211, 219), (212, 218),
                                                 (213, 217)]):
        mask[row, c0 : c1 + 1] = True
    assert mask_to_ring(mask) == e3
    one = np.zeros((5, 5), bool)
    one[0, 0] = True  # touching the border: coordinates down to -0.5
    assert mask_to_ring(one) == [[0.0, 0.5], [-0.5, 0.0], [0.0, -0.5], [0.5, 0.0], [0.0, 0.5]]
    rect = np.zeros((10, 10), bool)
    rect[2:5, 3:7] = True
    assert len(mask_to_ring(rect)) == 15
    assert mask_to_ring(np.zeros((4, 4), bool)) is None
    # bounding-box cropping and the numpy contour chaining give samapi's coordinates exactly
    # (holes, saddles, several parts, ties between equally long contours)
    from scipy import ndimage
    from skimage.measure import find_contours

    rng = np.random.default_rng(0)
    for i in range(400):
        shape = (40, 50) if i < 100 else tuple(rng.integers(1, 25, 2))
        m = rng.random(shape) > rng.uniform(0.05, 0.95)
        m = ndimage.binary_opening(m) if i % 2 else m
        if m.any():
            assert mask_to_ring(m) == samapi_mask_to_ring(m)
            padded = np.pad(m, 1)
            contours = find_contours(padded, 0.5)
            assert np.array_equal(longest_contour_numpy(padded), contours[int(np.argmax([len(c) for c in contours]))])
    ties = np.zeros((30, 40), bool)
    ties[2:5, 20:23] = ties[10:13, 2:5] = ties[2:5, 30:33] = True
    assert np.array_equal(longest_contour_numpy(np.pad(ties, 1)), find_contours(np.pad(ties, 1), 0.5)[0])
    ragged = ndimage.binary_opening(rng.random((150, 160)) > 0.5)  # the numpy path, via mask_to_ring
    assert mask_to_ring(ragged) == samapi_mask_to_ring(ragged)
    # per-mask quality (samapi rotates them), object_idx from -1, empty masks left out
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 1:3, 1:3] = masks[2, 5:9, 5:9] = True
    feats = mask_features(masks, [0.9, 0.5, 0.7], "vit_b")
    assert [f["properties"]["object_idx"] for f in feats] == [-1, 1]
    assert [f["properties"]["quality"] for f in feats] == [0.9, 0.7]
    assert list(feats[0]) == ["type", "geometry", "properties"]
    assert "quality" not in mask_features(masks[:1], [float("nan")], "vit_b")[0]["properties"]


def test_decode_image_converts_and_refuses():
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(png_b64(rgb)), rgb)
    gray = rgb[..., 0]
    assert np.array_equal(decode_image(png_b64(gray)), np.repeat(gray[..., None], 3, axis=2))  # samapi: 500
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(decode_image(png_b64(rgba)), rgb)  # alpha dropped
    buf = io.BytesIO()
    Image.fromarray((gray.astype(np.uint16) * 257)).save(buf, "PNG")
    out = decode_image(base64.b64encode(buf.getvalue()).decode())
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(decode_image("data:image/png;base64," + png_b64(rgb).rstrip("=")), rgb)
    for bad, what in [("@@@", "base64"), (base64.b64encode(b"hello world").decode(), "image"), ("", "empty"),
                      (png_b64(np.zeros((600, 600), np.uint8)), "larger")]:
        with pytest.raises(RequestError) as err:
            decode_image(bad, max_pixels=MAX_IMAGE_PIXELS)
        assert err.value.status == 400 and what in err.value.detail


# ------------------------------------------------------------------------------------ E1-E7 against the server


def test_e1_weights_listing(server, urls):
    c = server.client
    for t in TYPES:
        status, ctype, body = c.get(f"/sam/weights/?type={t}")
        assert status == 200 and ctype.startswith("application/json")
        rows = json.loads(body)
        assert rows, f"empty weights list for {t} (the extension would throw on Run)"
        assert all(list(r) == ["type", "name", "url"] for r in rows)
        assert rows[0] == {"type": "vit_b", "name": "tiny_sam", "url": urls["sam"]}  # the default first
    # the served files, then the embedded model (always available, listed under vit_b)
    assert [r["url"] for r in json.loads(c.get("/sam/weights/?type=vit_b")[2])] == [
        urls["sam"], urls["plain"], "pathosam://pathosam_small"]
    assert c.get("/sam/weights?type=vit_b") == c.get("/sam/weights/?type=vit_b") == c.get("/weights/?type=vit_b")
    assert len(json.loads(c.get("/sam/weights/")[2])) == 3
    status, _, body = c.get("/sam/weights/?type=vit_x")
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["query", "type"]


def test_e2_registration_progress_cancel(server, urls):
    c = server.client
    assert json.loads(c.get("/sam/progress/")[2]) == {"message": None, "percent": -1}
    assert c.get("/sam/progress")[0] == 200
    assert c.get("/sam/weights/cancel/")[1:] == ("text/plain; charset=utf-8", b"Cancel signal sent")
    assert c.get("/sam/weights/cancel")[2] == b"Cancel signal sent"

    def register(t, name, url):
        status, ctype, body = c.post("/sam/weights/", {"type": t, "name": name, "url": url})
        assert status == 200 and ctype.startswith("text/plain")
        return body.decode()

    # the PathoSAM URL of the extension's README resolves to the (here empty) registry cache: no download
    msg = register("vit_b", "vit_b_histopathology", PATHOSAM_VIT_B_URL)
    assert msg.startswith("Cannot register vit_b_histopathology")
    assert "pathosam models fetch vit_b_histopathology" in msg
    status, _, body = c.post("/sam/", prompt_body("vit_b", "AAAA", bbox=[1, 1, 5, 5], url=PATHOSAM_VIT_B_URL))
    assert status == 503 and "not in this server's cache" in json.loads(body)["detail"]
    # arbitrary URLs are refused without --allow-remote-weights (and requests naming them: 403)
    assert register("vit_b", "vit_b_lm", ZENODO_LM_URL).startswith("Refused to register vit_b_lm")
    assert register("vit_b", "etc", "file:///etc/passwd").startswith("Refused to register")
    # an allowed file under another name: registered and listed; samapi's duplicate messages
    assert register("vit_h", "my nuclei model", urls["plain"]) == f"my nuclei model ({urls['plain']}) is registered."
    assert {"type": "vit_h", "name": "my nuclei model", "url": urls["plain"]} in json.loads(
        c.get("/sam/weights/?type=vit_h")[2])
    assert register("vit_h", "my nuclei model", urls["sam"]) == \
        "Model file with the name 'my nuclei model' already exists. Skip registration."
    assert register("vit_h", "again", urls["plain"]) == \
        f"Model file with the url '{urls['plain']}' already exists. Skip registration."
    assert register("vit_b", "tiny_sam", urls["sam"]) == f"tiny_sam ({urls['sam']}) is registered."
    assert c.post("/sam/weights/", {"type": "vit_b", "name": "x"})[0] == 422


class _SlowFiles(http.server.BaseHTTPRequestHandler):
    """Serves one file slowly (256 KiB every 15 ms) so that progress and cancel can be seen."""

    payload = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        try:
            for i in range(0, len(self.payload), 1 << 18):
                self.wfile.write(self.payload[i : i + (1 << 18)])
                time.sleep(0.015)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_e2_remote_weights_with_progress_and_cancel(files, images, tmp_path):
    _SlowFiles.payload = Path(files["plain"]).read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFiles)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/weights/download?x=1"
    # downloads from localhost only: the slow file server above
    srv = ServerProcess(["--model", str(files["sam"]), "--allow-remote-weights"], tmp_path, offline=False)
    try:
        c = srv.client
        body = {"type": "vit_b", "name": "remote", "url": url}

        def register_while_polling(cancel: bool):
            result = {}
            t = threading.Thread(target=lambda: result.update(r=c.post("/sam/weights/", body)))
            t.start()
            seen = []
            while t.is_alive():
                p = json.loads(c.get("/sam/progress/")[2])
                seen.append(p)
                if cancel and p["percent"] >= 0:
                    assert c.get("/sam/weights/cancel/")[2] == b"Cancel signal sent"
                time.sleep(0.1)  # the extension polls every 100 ms
            t.join()
            return result["r"][2].decode(), seen

        msg, seen = register_while_polling(cancel=True)
        assert msg == f"Cancelled to register remote ({url})."
        assert any(p["percent"] >= 0 and p["message"] for p in seen)
        msg, seen = register_while_polling(cancel=False)
        assert msg == f"remote ({url}) is registered."
        assert any(0 < p["percent"] <= 100 and "M/" in p["message"] for p in seen)
        assert json.loads(c.get("/sam/progress/")[2]) == {"message": None, "percent": -1}
        assert {"type": "vit_b", "name": "remote", "url": url} in json.loads(c.get("/sam/weights/?type=vit_b")[2])
        rgb, b64 = images["a"]
        feats = parse_features(*c.post("/sam/", prompt_body("vit_b", b64, points=[[50, 60]], labels=[1], url=url)),
                               rgb.shape[1], rgb.shape[0], "vit_b")
        assert len(feats) <= 1
    finally:
        srv.stop()
        httpd.shutdown()


def _fake_registry(monkeypatch, files, sam_url: str, decoder_url: str) -> None:
    """Register the tiny weights as ``vit_b_testsam`` (+ decoder) with their real hashes."""
    from pathosam import registry

    for name, url, f, dec in [("vit_b_testsam", sam_url, files["sam"], "vit_b_testsam_decoder"),
                              ("vit_b_testsam_decoder", decoder_url, files["decoder"], None)]:
        entry = registry.ModelEntry(name, url, "xxh128:" + registry.file_hash(f), "test", decoder=dec)
        monkeypatch.setitem(registry.MODELS, name, entry)


def test_registered_urls_resolve_offline_to_the_cache(files, tmp_path, monkeypatch):
    from pathosam import registry
    from pathosam.server.engine import Engine
    from pathosam.server.weights import ModelSource, WeightsEntry, WeightsStore

    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")
    url, dec_url = "https://example.invalid/s/TESTSAM/download", "https://example.invalid/s/TESTDEC/download"
    _fake_registry(monkeypatch, files, url, dec_url)
    plain = Path(files["plain"]).resolve()
    store = WeightsStore([(WeightsEntry("vit_b", "plain", plain.as_uri()), ModelSource("file", str(plain)))],
                         tmp_path / "weights", allow_downloads=True)  # offline wins over allow_downloads
    assert [e.name for e in store.entries("vit_b")] == ["plain", "pathosam_small"]
    with pytest.raises(RequestError) as err:
        store.resolve_url(url)
    assert err.value.status == 503 and "pathosam models fetch vit_b_testsam" in err.value.detail
    assert "not in this server's cache" in store.register("vit_b", "PathoSAM", url)
    # once cached (as `pathosam models import` puts files): listed, resolved, registered after a hash check
    registry.import_file("vit_b_testsam", files["sam"])
    registry.import_file("vit_b_testsam_decoder", files["decoder"])
    assert store.entries("vit_b")[2] == WeightsEntry("vit_b", "vit_b_testsam", url)
    assert store.entries("vit_l") == store.entries(None)  # a type without weights lists everything
    source = store.resolve_url(f" {url}/ ")
    assert source == ModelSource("registry", "vit_b_testsam", "vit_b_testsam_decoder")
    assert store.register("vit_b", "PathoSAM", url) == f"PathoSAM ({url}) is registered."
    assert WeightsEntry("vit_b", "PathoSAM", url) in store.entries("vit_b")
    assert json.loads((tmp_path / "weights/registered.json").read_text()) == [
        {"type": "vit_b", "name": "PathoSAM", "url": url}]
    model = Engine(store, "cpu").model(source)
    assert model.decoder is not None  # the registered decoder came along: automask runs AIS
    with pytest.raises(RequestError) as err:
        store.resolve_url(dec_url)
    assert err.value.status == 400
    registry.path("vit_b_testsam").write_bytes(b"corrupt")
    assert store.register("vit_h", "other", url).startswith("Cannot register other")


def test_registered_model_download_is_hash_checked(files, tmp_path, monkeypatch):
    from pathosam import registry
    from pathosam.server.weights import ModelSource, WeightsEntry, WeightsStore

    _SlowFiles.payload = Path(files["sam"]).read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFiles)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("PATHOSAM_OFFLINE", raising=False)
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        _fake_registry(monkeypatch, files, f"{base}/sam", f"{base}/decoder")
        plain = Path(files["plain"]).resolve()
        served = [(WeightsEntry("vit_b", "plain", plain.as_uri()), ModelSource("file", str(plain)))]
        assert not WeightsStore(served, tmp_path / "w").allow_downloads
        store = WeightsStore(served, tmp_path / "w", allow_downloads=True)
        assert WeightsEntry("vit_b", "vit_b_testsam", f"{base}/sam") in store.entries("vit_b")
        # the "decoder" URL serves the SAM file too: its hash does not match, so it is not kept
        sam, decoder = store.local_files(store.resolve_url(f"{base}/sam"))
        assert sam == registry.path("vit_b_testsam") and registry.file_hash(sam) == registry.file_hash(files["sam"])
        assert decoder is None and not registry.path("vit_b_testsam_decoder").exists()
        assert store.progress.as_json() == {"message": None, "percent": -1}
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_files):
    """In-process predictions of the served weights, to check the server's answers."""
    import pathosam

    model = pathosam.load_model(tiny_files["tiny_sam.pt"], device="cpu")
    cache = {}

    def predict(rgb, **prompt):
        key = rgb.tobytes()
        if key not in cache:
            cache[key] = model.embed(rgb, progress=False)
        return model.predict(cache[key], **prompt)

    return predict


def assert_same_answer(features, masks, ious):
    """Server Features == the in-process masks (same order, own qualities, same outline)."""
    import shapely

    expected = mask_features(masks, ious, "vit_b")
    assert [f["properties"]["object_idx"] for f in features] == [f["properties"]["object_idx"] for f in expected]
    for got, want in zip(features, expected):
        assert abs(got["properties"]["quality"] - want["properties"]["quality"]) < 1e-4
        a = shapely.make_valid(shapely.Polygon(got["geometry"]["coordinates"][0]))
        b = shapely.make_valid(shapely.Polygon(want["geometry"]["coordinates"][0]))
        assert a.intersection(b).area >= 0.98 * max(a.union(b).area, 1e-9)


def test_e3_rectangle_prompt_multimask(server, images, urls, reference):
    rgb, b64 = images["a"]
    H, W = rgb.shape[:2]
    body = prompt_body("vit_b", b64, bbox=[60, 40, 121, 102], multimask=True, url=urls["sam"])
    raw = gson(body)
    assert b"\\u003d" in raw or not b64.endswith("=")
    status, ctype, answer = server.client.post("/sam/", raw)
    feats = parse_features(status, ctype, answer, W, H, "vit_b")
    masks, ious, _ = reference(rgb, box=(60, 40, 121, 102), multimask=True)
    assert len(feats) == int(masks.any(axis=(1, 2)).sum()) and len(feats) >= 1
    assert_same_answer(feats, masks, ious)
    # the same request without the trailing slash (the extension posts to the URL as typed): no
    # redirect, and the cached embedding gives the identical answer
    assert server.client.post("/sam", raw) == (200, ctype, answer)
    assert server.client.post("/", raw)[2] == answer


def test_e4_point_prompt_background_first(server, images, urls, reference):
    rgb, b64 = images["a"]
    H, W = rgb.shape[:2]
    points, labels = [[20, 30], [150, 120], [95, 70]], [0, 0, 1]
    for url in (urls["sam"], None):  # checkpoint_url omitted -> the default entry of the type
        feats = parse_features(*server.client.post("/sam/", prompt_body("vit_b", b64, points=points, labels=labels,
                                                                        url=url)), W, H, "vit_b")
        masks, ious, _ = reference(rgb, points=np.array(points), point_labels=np.array(labels), multimask=False)
        assert len(feats) == 1 and feats[0]["properties"]["object_idx"] == -1
        assert_same_answer(feats, masks, ious)
    # unknown fields are ignored, float coordinates truncated (pydantic v1 semantics)
    body = prompt_body("vit_b", b64, points=[[95.7, 70.2]], labels=[1], url=urls["sam"])
    body["checkpointUrl"] = "ignored"
    exact = server.client.post("/sam/", prompt_body("vit_b", b64, points=[[95, 70]], labels=[1], url=urls["sam"]))
    assert server.client.post("/sam/", body) == exact


def test_e5_automask(server, images, urls):
    rgb = images["a"][0][:64, :64]
    b64 = png_b64(rgb)
    # AIS (the default model has an instance decoder); the tiny random model may find nothing
    parse_features(*server.client.post("/sam/automask/", automask_body("vit_b", b64, urls["sam"])), 64, 64, "vit_b")
    # AMG on plain SAM weights, with every mask kept: one Feature per mask, predicted IoU as quality
    body = automask_body("vit_b", b64, urls["plain"], output_type="Multi-mask (all)", points_per_side=3,
                         pred_iou_thresh=0.0, stability_score_thresh=0.0, include_image_edge=True)
    feats = parse_features(*server.client.post("/sam/automask", body), 64, 64, "vit_b")
    assert len(feats) > 0
    assert [f["properties"]["object_idx"] for f in feats] == list(range(-1, len(feats) - 1))
    nms = parse_features(*server.client.post("/sam/automask/", {**body, "output_type": "Single Mask",
                                                                "box_nms_thresh": 0.2}), 64, 64, "vit_b")
    assert len(nms) <= len(feats)
    status, _, answer = server.client.post("/sam/automask/", {**body, "output_type": "Multi-mask (biggest)"})
    assert status == 400 and "output_type" in json.loads(answer)["detail"]


def test_e7_version_errors_and_unsupported_modes(server, images):
    c = server.client
    import pathosam

    assert c.get("/sam/version/") == (200, "text/plain; charset=utf-8", pathosam.__version__.encode())
    assert c.get("/sam/version")[0] == 200
    status, _, body = c.post("/sam/", {"type": "vit_x", "b64img": "AAAA"})
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "type"]
    status, _, body = c.post("/sam/", {"type": "vit_b"})
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "b64img"]
    status, ctype, body = c.post("/sam/", {"type": "vit_b", "b64img": "not base64!", "bbox": [0, 0, 5, 5]})
    assert status == 400 and ctype == "application/json" and "base64" in json.loads(body)["detail"]
    assert c.post("/sam/sam3/", {"type": "sam3", "b64img": "AAAA"})[0] == 503
    assert c.post("/sam/video/", {"type": "sam2_s"})[0] == 404
    assert c.post("/sam/upload/", b"--x--")[0] == 501


# ------------------------------------------------------------------------------------ robustness


def test_bad_input_then_good_and_memory(server, images, urls):
    c = server.client
    rgb, b64 = images["b"]
    H, W = rgb.shape[:2]
    gray = png_b64(rgb[..., 1])
    good = prompt_body("vit_b", b64, points=[[40, 50]], labels=[1], url=urls["sam"])
    bad: list[tuple[bytes | dict, int]] = [
        (b'{"type":"vit_b","b64img":', 422),  # malformed JSON
        (b"[1, 2, 3]", 422),  # not an object
        (b"\xff\xfe\x00garbage", 422),  # not UTF-8 JSON
        (b"[" * 100_000, 400),  # nested too deep for the JSON parser
        ({"type": "vit_b", "b64img": "@@@@", "bbox": [0, 0, 9, 9]}, 400),  # bad base64
        (prompt_body("vit_b", base64.b64encode(b"GIF89a but not really").decode(), bbox=[0, 0, 9, 9]), 400),
        (prompt_body("vit_b", b64, bbox=[W + 10, 0, W + 50, 40], url=urls["sam"]), 400),  # box outside
        (prompt_body("vit_b", b64, bbox=[50, 40, 10, 60], url=urls["sam"]), 400),  # x1 < x0
        (prompt_body("vit_b", b64, bbox=[1, 2, 3], url=urls["sam"]), 400),
        (prompt_body("vit_b", b64, url=urls["sam"]), 400),  # empty prompt
        (prompt_body("vit_b", b64, bbox=[], points=[], labels=[], url=urls["sam"]), 400),
        (prompt_body("vit_b", b64, points=[[5, 5]], labels=[1, 0], url=urls["sam"]), 400),
        (prompt_body("vit_b", b64, points=[[5, 5]], labels=[2], url=urls["sam"]), 400),
        (prompt_body("vit_b", b64, points=[[5, H]], labels=[1], url=urls["sam"]), 400),  # point outside
        (prompt_body("vit_b", b64, points=[[5, 5]] * 1025, labels=[1] * 1025, url=urls["sam"]), 400),
        (prompt_body("vit_b", b64, points=[[5]], labels=[1], url=urls["sam"]), 422),
        (prompt_body("vit_b", b64, points=[[5, 5]], labels=[1], url=ZENODO_LM_URL), 403),
        (prompt_body("vit_b", b64, points=[[5, 5]], labels=[1], url="file:///etc/passwd"), 403),
        (prompt_body("vit_b", b64, points=[[5, 5]], labels=[1], url="ftp://x/y.pt"), 400),
        (prompt_body("vit_b", png_b64(np.zeros((600, 600, 3), np.uint8)), bbox=[0, 0, 9, 9]), 400),  # too many px
        (b'{"type":"vit_b","b64img":"' + b"A" * (MAX_REQUEST_MB << 20) + b'"}', 413),  # too large
        (automask_body("vit_b", b64, urls["sam"], points_per_side=100000), 422),
        (automask_body("vit_b", png_b64(rgb[:4, :4]), urls["sam"]), 400),  # too small for automask
    ]
    sent = 0

    def cycle():
        nonlocal sent
        for body, expected in bad:
            path = "/sam/automask/" if isinstance(body, dict) and "points_per_side" in body else "/sam/"
            status, ctype, answer = c.post(path, body)
            sent += 1
            assert status == expected, (body if isinstance(body, dict) else body[:80], status, answer[:300])
            assert ctype == "application/json" and "detail" in json.loads(answer)
        for body in (good, {**good, "b64img": gray}):  # grayscale PNG: fixed (samapi: 500)
            parse_features(*c.post("/sam/", body), W, H, "vit_b")
            sent += 1

    cycle()

    def chunked_body():  # no Content-Length: counted while read
        yield b'{"type":"vit_b","b64img":"'
        for _ in range(MAX_REQUEST_MB * 32):
            yield b"A" * 65536
        yield b'"}'

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/sam/", chunked_body(), {"Content-Type": "application/json"}, encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    cycle()
    rss0 = server.rss_kib()
    while sent < 200:
        cycle()
    if rss0 is not None:
        grown = server.rss_kib() - rss0
        # a leak of one 160 KB body per request would show; allocator noise stays well below
        assert grown < 32 * 1024, f"server RSS grew by {grown} KiB over {sent} requests"
    assert server.proc.poll() is None
    parse_features(*c.post("/sam/", good), W, H, "vit_b")


def test_concurrent_requests_get_their_own_answers(server, images, urls):
    c = server.client
    prompts = [([[40, 50]], [1]), ([[120, 90], [10, 10]], [1, 0]), ([[150, 30]], [1])]
    jobs = [(name, i) for i in range(len(prompts)) for name in ("a", "b")]

    def ask(job):
        name, i = job
        points, labels = prompts[i]
        body = prompt_body("vit_b", images[name][1], points=points, labels=labels, multimask=True, url=urls["sam"])
        return c.post("/sam/", body)

    expected = {job: ask(job) for job in jobs}  # one at a time
    for job, (status, _, answer) in expected.items():
        rgb = images[job[0]][0]
        parse_features(status, "application/json", answer, rgb.shape[1], rgb.shape[0], "vit_b")
    assert expected[("a", 0)][2] != expected[("b", 0)][2]
    many = jobs * 3
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, many))
    for job, answer in zip(many, answers):
        assert answer == expected[job], f"{job}: a concurrent answer differs from the sequential one"


def test_serve_cli_refuses_bad_setups(tmp_path, monkeypatch, capsys):
    from pathosam.cli import main

    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")
    assert main(["serve", "--model", str(tmp_path / "missing.pt")]) == 1
    assert "neither a registered model name" in capsys.readouterr().err
    assert main(["serve", "--model", "vit_b_histopathology"]) == 1  # not cached
    assert "pathosam models fetch vit_b_histopathology" in capsys.readouterr().err
    assert main(["serve", "--model", "vit_b_histopathology_decoder"]) == 1
    assert main(["serve", "--decoder", "x.pt"]) == 2
    assert main(["serve", "--port", "70000"]) == 2
