"""`pathosam serve` availability and the embedded model: the default model works from QuPath,
prompts do not wait behind an automask, automask has a time limit and stops when its client
goes away, and a body that never arrives times out.

The server runs in-process (uvicorn in a thread on 127.0.0.1, an ephemeral port) with the
embedded model ``pathosam_small``, so these tests need neither the shared folder nor a download.
Tiles are slowed down artificially where a test needs an automask that takes a while.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import pathosam
from pathosam import registry
from pathosam.server import ServedModel, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "he_sample.tif"
TYPES = ["vit_h", "vit_l", "vit_b", "vit_t", "sam2_l", "sam2_bp", "sam2_s", "sam2_t", "sam3"]
EMBEDDED_URL = "pathosam://pathosam_small"
#: Seconds added to every tile of an automask in the slowed tests.
SLOW_TILE = 0.25

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ helpers


class LiveServer:
    """The app on a real uvicorn server in a thread, bound to 127.0.0.1 on an ephemeral port."""

    def __init__(self, config: ServerConfig) -> None:
        import uvicorn

        from pathosam.server import create_app

        self.app = create_app(config)
        self.engine = self.app.state.engine
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def request(self, method: str, path: str, body=None, timeout: float = 60,
                headers: dict | None = None) -> tuple[int, str, bytes]:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, data, headers if headers is not None else {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "", resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def png_b64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def sample(rows: int, cols: int, r0: int = 0, c0: int = 0) -> np.ndarray:
    return np.ascontiguousarray(tifffile.imread(SAMPLE)[r0 : r0 + rows, c0 : c0 + cols, :3])


def prompt(b64: str, x: int = 40, y: int = 40, url: str | None = None) -> dict:
    body = {"type": "vit_b", "b64img": b64, "point_coords": [[x, y]], "point_labels": [1], "multimask_output": True}
    if url is not None:
        body["checkpoint_url"] = url
    return body


def automask(b64: str, **over) -> dict:
    return {"type": "vit_b", "b64img": b64, "output_type": "Multi-mask (smallest)", **over}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server as ``pathosam serve`` starts it without --model, plus a short body timeout."""
    tmp = tmp_path_factory.mktemp("availability")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATHOSAM_CACHE_DIR", str(tmp / "cache"))
    mp.setenv("PATHOSAM_OFFLINE", "1")
    srv = LiveServer(ServerConfig(device="cpu", weights_dir=tmp / "weights", max_request_mb=1, body_timeout=1.0))
    yield srv
    srv.stop()
    mp.undo()


@pytest.fixture
def slow_tiles(monkeypatch):
    """Every automask tile takes SLOW_TILE s longer; returns the list of tiles run so far."""
    import pathosam.inference as inference

    run_tiles = inference.run_tiles
    done: list[int] = []

    def slowed(model, inputs, *args, **kwargs):
        time.sleep(SLOW_TILE)
        out = run_tiles(model, inputs, *args, **kwargs)
        done.append(len(inputs))
        return out

    monkeypatch.setattr(inference, "run_tiles", slowed)
    return done


def wait_idle(srv: LiveServer, timeout: float = 20) -> None:
    """Until no model work holds the engine's lock."""
    deadline = time.monotonic() + timeout
    while srv.engine.lock._busy:
        assert time.monotonic() < deadline, "model work did not stop"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------ the embedded model


def test_embedded_model_is_the_default_listed_under_vit_b_and_works(served):
    for t in TYPES:  # never empty; the embedded model under vit_b, first (the default)
        status, _, body = served.request("GET", f"/sam/weights/?type={t}")
        assert status == 200
        assert json.loads(body)[0] == {"type": "vit_b", "name": "pathosam_small", "url": EMBEDDED_URL}
    rgb = sample(160, 200, 300, 200)
    b64 = png_b64(rgb)
    answers = []
    for url in (None, EMBEDDED_URL, EMBEDDED_URL + "/"):  # omitted = the type's default
        status, ctype, body = served.request("POST", "/sam/", prompt(b64, 90, 70, url))
        assert status == 200 and ctype == "application/json", body[:300]
        answers.append(body)
    assert answers[0] == answers[1] == answers[2]
    feats = json.loads(answers[0])
    assert 1 <= len(feats) <= 3 and all(f["properties"]["sam_model"] == "vit_b" for f in feats)
    # automask = the library's segmentation with the model's registered AIS defaults (by name)
    expected = pathosam.segment_nuclei(rgb, pathosam.load_model(device="cpu", progress=False), progress=False)
    assert expected.n_objects > 5
    status, _, body = served.request("POST", "/sam/automask/", automask(b64, include_image_edge=True,
                                                                          checkpoint_url=EMBEDDED_URL))
    assert status == 200, body[:300]
    feats = json.loads(body)
    assert len(feats) == expected.n_objects
    assert all(0.0 < f["properties"]["quality"] <= 1.0 for f in feats)
    assert served.request("POST", "/sam/", prompt(b64, url="pathosam://vit_b_unknown"))[0] == 400


def test_a_file_server_also_offers_the_embedded_model(tmp_path, monkeypatch):
    from pathosam.server import create_app

    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")
    copy = tmp_path / "my_model.pt"  # a file of width 96: listed as vit_b too
    copy.write_bytes(registry.path(registry.DEFAULT_MODEL).read_bytes())
    store = create_app(ServerConfig(models=[ServedModel(str(copy))], device="cpu",
                                    weights_dir=tmp_path / "w")).state.store
    assert [(e.type, e.name, e.url) for e in store.entries("vit_b")] == [
        ("vit_b", "my_model", copy.resolve().as_uri()), ("vit_b", "pathosam_small", EMBEDDED_URL)]
    assert store.entries("vit_h") == store.entries("vit_b")
    assert store.resolve(EMBEDDED_URL, "vit_h").sam == "pathosam_small"


def test_serve_cli_default_model_flags_and_bad_checkpoint(tmp_path, monkeypatch, capsys):
    import pathosam.server
    from pathosam.cli import main

    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")
    seen = {}
    monkeypatch.setattr(pathosam.server, "serve", lambda config, **kw: seen.update(config=config, **kw))
    assert main(["serve", "--port", "8123"]) == 0
    config = seen["config"]
    assert config.models == [ServedModel(registry.DEFAULT_MODEL)]
    assert (config.max_request_seconds, config.body_timeout) == (300.0, 60.0)
    err = capsys.readouterr().err
    assert err.count("embedded model pathosam_small") == 1 and "http://127.0.0.1:8123/sam/" in err
    assert main(["serve", "--max-request-seconds", "2.5", "--body-timeout", "0"]) == 0
    assert (seen["config"].max_request_seconds, seen["config"].body_timeout) == (2.5, 0.0)
    for flag, value in (("--max-request-seconds", "-1"), ("--body-timeout", "nan"), ("--body-timeout", "inf")):
        assert main(["serve", flag, value]) == 2, (flag, value)
        assert flag in capsys.readouterr().err
    monkeypatch.undo()  # the real serve: a bad checkpoint ends it with one line naming the file
    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(tmp_path / "cache"))
    for name, content in (("garbage.pt", b"not a checkpoint"),
                          ("truncated.pt", registry.path(registry.DEFAULT_MODEL).read_bytes()[:5000])):
        bad = tmp_path / name
        bad.write_bytes(content)
        assert main(["serve", "-d", "cpu", "--log-level", "warning", "--model", str(bad)]) == 1
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("pathosam: error:")]
        assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 2  # the "loading ..." line and the error


# ------------------------------------------------------------------------------------ availability


def test_prompt_does_not_wait_behind_automask(served, slow_tiles):
    big = png_b64(sample(300, 300, 100, 100))  # 16 tiles of pathosam_small, >= 4 s here
    small_rgb = sample(120, 120, 20, 500)
    small = png_b64(small_rgb)
    alone = served.request("POST", "/sam/", prompt(small, 60, 60))
    assert alone[0] == 200
    result = {}
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: result.update(
        r=served.request("POST", "/sam/automask/", automask(big)), t=time.monotonic()))
    worker.start()
    while not slow_tiles:  # the automask is running
        time.sleep(0.01)
    latencies = []
    for x in (30, 60, 90):  # a new image (an embedding to compute) and then the cached one
        t1 = time.monotonic()
        answer = served.request("POST", "/sam/", prompt(small, x, 60))
        latencies.append(time.monotonic() - t1)
        assert answer[0] == 200 and worker.is_alive(), "the prompt waited for the whole automask"
        if x == 60:
            assert answer == alone  # same answer as without the automask in between
    worker.join()
    assert result["r"][0] == 200, result["r"][2][:300]
    assert sum(slow_tiles) == 16
    automask_seconds = result["t"] - t0
    assert max(latencies) < automask_seconds / 3, (latencies, automask_seconds)


def test_automask_time_limit(served, slow_tiles, monkeypatch):
    monkeypatch.setattr(served.app.state.config, "max_request_seconds", 0.6)
    t0 = time.monotonic()
    status, ctype, body = served.request("POST", "/sam/automask/", automask(png_b64(sample(400, 400))))
    elapsed = time.monotonic() - t0
    assert status == 503 and ctype == "application/json"
    detail = json.loads(body)["detail"]
    assert "automask stopped" in detail and "0.6 s" in detail and "--max-request-seconds" in detail
    assert sum(slow_tiles) < 6 and elapsed < 5, (slow_tiles, elapsed)  # stopped, not run to the end
    wait_idle(served)
    assert served.request("POST", "/sam/", prompt(png_b64(sample(64, 64))))[0] == 200


def test_client_disconnect_stops_automask(served, slow_tiles):
    before = served.engine.stats["chunks"]
    body = json.dumps(automask(png_b64(sample(400, 400, 200, 200)))).encode()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", "/sam/automask/", body, {"Content-Type": "application/json"})
    while sum(slow_tiles) < 2:
        time.sleep(0.01)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the user closed QuPath
    conn.close()
    t0 = time.monotonic()
    wait_idle(served)
    assert time.monotonic() - t0 < 3
    time.sleep(0.3)
    assert sum(slow_tiles) < 10, f"{sum(slow_tiles)} of 25 tiles computed after the client left"
    assert served.engine.stats["chunks"] - before == sum(slow_tiles)
    assert served.request("POST", "/sam/", prompt(png_b64(sample(64, 64))))[0] == 200


def _raw(port: int, head: bytes, body: bytes = b"", wait: float = 10) -> tuple[bytes, float]:
    """Send ``head`` + ``body`` on a raw socket and read until the server closes or answers."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    return data, time.monotonic() - t0


def test_body_that_never_arrives_times_out(served):
    def head(length: int) -> bytes:
        return (f"POST /sam/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()

    # within --max-request-mb (1 MiB), nothing sent; then half a body
    for body in (b"", b'{"type":"vit_b","b64img":"' + b"A" * 1000):
        answer, seconds = _raw(served.port, head(1_000_000), body)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"--body-timeout" in answer and seconds < 5
    # over the limit: 413 at once (after a short drain), not after the body timeout of a huge body
    answer, seconds = _raw(served.port, head(50_000_000))
    assert answer.startswith(b"HTTP/1.1 413") and seconds < 5
    assert served.request("POST", "/sam/", prompt(png_b64(sample(64, 64))))[0] == 200


# ------------------------------------------------------------------------------------ the library hooks


def test_library_chunk_callbacks_can_stop_the_work():
    from pathosam.instances.amg import generate_mask_candidates

    model = pathosam.load_model(device="cpu", progress=False)
    rgb = sample(150, 150)
    seen = []
    pathosam.segment_nuclei(rgb, model, progress=False, on_tiles=lambda tiles, maps: seen.append(
        [(t.index, m.shape) for t, m in zip(tiles, maps)]))
    assert [s[0][0] for s in seen] == list(range(4))  # 4 tiles of 96 + 16 px halo, one call each
    assert seen[0][0][1] == (3, 112, 112)

    class Stop(Exception):
        pass

    def stop_after(n):
        def callback(*args):
            seen.append(args)
            if len(seen) >= n:
                raise Stop

        return callback

    seen.clear()
    with pytest.raises(Stop):
        pathosam.segment_nuclei(rgb, model, progress=False, batch_size=2, on_tiles=stop_after(2))
    assert len(seen) == 2 and len(seen[0][0]) == 2
    with pytest.raises(ValueError, match="on_tiles"):
        pathosam.segment_nuclei(rgb, model, mode="amg", on_tiles=print)
    seen.clear()
    emb = model.embed(rgb[:64, :64], progress=False)
    with pytest.raises(Stop):
        generate_mask_candidates(model, emb, points_per_side=4, points_per_batch=4, progress=False,
                                 on_batch=stop_after(3))
    assert seen == [(1, 4), (2, 4), (3, 4)]
