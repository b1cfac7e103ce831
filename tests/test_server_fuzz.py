"""No request makes `pathosam serve` answer 500: malformed requests get a 4xx, the server lives on.

Hypothesis (derandomized: the same examples on every run) builds requests for every route --
``/sam/``, ``/sam/automask/``, ``/sam/weights/`` GET and POST, ``weights/cancel/``,
``progress/``, with and without the ``/sam`` prefix and the trailing slash -- by breaking a valid
request in one to three ways (wrong types, out-of-range and huge numbers, NaN / Infinity,
non-images, broken base64, odd image formats, lone surrogates, control characters and ``%00`` in
URLs, oversized lists and bodies), plus raw bodies of random bytes. Each malformed request must
get a 4xx JSON answer; after each test a valid request still gets its 200.

The server is the in-process one of :mod:`tests.test_server_availability` with the embedded
model, so the fuzz needs no shared data and stays fast.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("hypothesis", reason="the request fuzz needs hypothesis (pip install pathosam[test])")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pathosam.server import ServerConfig

from .test_server_availability import EMBEDDED_URL, TYPES, LiveServer, sample

pytestmark = pytest.mark.usefixtures("one_thread")

FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
MAX_IMAGE_PIXELS = 200_000
PREFIXES = ["/sam", ""]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = sample(64, 64, 300, 300)
GOOD = _b64(_encode(Image.fromarray(RGB)))
_PNG = _encode(Image.fromarray(RGB))
_FLOAT = np.linspace(-1, 2, 40 * 30, dtype=np.float32).reshape(40, 30)
_FLOAT[3, 4], _FLOAT[5, 6] = np.nan, np.inf
#: Valid images in odd formats and shapes: the server must convert or refuse them (never 500).
ODD_IMAGES = {
    "gray": _encode(Image.fromarray(RGB[..., 0])),
    "gray+alpha": _encode(Image.fromarray(RGB[..., :2].copy(), "LA")),
    "rgba": _encode(Image.fromarray(np.dstack([RGB, RGB[..., :1]]))),
    "palette": _encode(Image.fromarray(RGB).convert("P")),
    "1-bit": _encode(Image.fromarray(RGB[..., 0] > 128)),
    "16-bit": _encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257)),
    "float-tiff-nan": _encode(Image.fromarray(_FLOAT), "TIFF"),
    "int32-tiff": _encode(Image.fromarray(RGB[..., 0].astype(np.int32) - 100), "TIFF"),
    "cmyk-jpeg": _encode(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
    "1x1": _encode(Image.fromarray(RGB[:1, :1])),
    "1x300": _encode(Image.fromarray(np.zeros((1, 300, 3), np.uint8))),
    "300x1": _encode(Image.fromarray(np.zeros((300, 1, 3), np.uint8))),
    "gif-anim": _encode(Image.fromarray(RGB), "GIF", save_all=True,
                        append_images=[Image.fromarray(RGB[::-1].copy())]),
}
#: Payloads that are not a usable image: each must be a 400 (or 422 when not a string).
BAD_IMAGES = [
    "", "   ", "@@@@", "not base64!", "AAAA", _b64(b"hello world"), _PNG[:100].hex(),
    _b64(_PNG[:60]), _b64(_PNG[: len(_PNG) // 2]), _b64(_PNG[:8]), _b64(b"GIF89a" + b"\0" * 20),
    _b64(b"\x89PNG\r\n\x1a\n" + b"\xff" * 64), "data:image/png;base64,", "data:image/png;base64,%%%",
    _b64(_encode(Image.fromarray(np.zeros((600, 600), np.uint8)))),  # more pixels than allowed
    _b64(b"II*\x00" + b"\xff" * 40), _b64(b"BM" + b"\x00" * 60), "\ud800\udc00AAAA", "AAAA\ud800", "ÄÖÜ==",
]
BAD_URLS = [
    "file:///a%00b", "file:///%00", "file://%00/x", "a\x00b", "file:///x\ny", "\x7f", "http://[", "https://[::1",
    "ftp://x/y.pt", "gopher://x", "zz not a url", "https://example.invalid/model.pt", "file:///etc/passwd",
    "pathosam://unknown_model", "pathosam://", "file:///" + "a" * 5000, "\ud800", "https://x/\udfff",
    "file:///%ff%fe", "http://x:99999999/", "//host/path", "C:\\models\\x.pt", ":", "?", "#",
]
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(st.characters(codec=None), max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=6), c, max_size=4), max_leaves=10)
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=30)
NOT_INT = st.one_of(st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")),
                    st.sampled_from([2**31, 2**63, 2**64, 2**100, 10**300, -(2**31) - 1, -(2**63) - 1]),
                    st.integers(2**31, 2**90), st.integers(-(2**90), -(2**31) - 1),
                    st.text(st.characters(categories=["L"]), min_size=1, max_size=5),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATHOSAM_CACHE_DIR", str(tmp / "cache"))
    mp.setenv("PATHOSAM_OFFLINE", "1")
    srv = LiveServer(ServerConfig(device="cpu", weights_dir=tmp / "weights", max_request_mb=1,
                                  max_image_pixels=MAX_IMAGE_PIXELS, body_timeout=2.0))
    yield srv
    assert srv.request("POST", "/sam/", valid_prompt())[0] == 200, "the server no longer answers"
    srv.stop()
    mp.undo()


def valid_prompt() -> dict:
    return {"type": "vit_b", "b64img": GOOD, "point_coords": [[10, 12]], "point_labels": [1],
            "multimask_output": False}


def route(draw, path: str) -> str:
    prefix = draw(st.sampled_from(PREFIXES))
    full = prefix + path
    return draw(st.sampled_from([full, full.rstrip("/") or "/"]))


def post(server: LiveServer, path: str, body) -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    return server.request("POST", path, data, headers={"Content-Type": "application/json"})


def assert_client_error(answer: tuple[int, str, bytes], what) -> None:
    status, ctype, body = answer
    assert 400 <= status < 500, (status, body[:300], repr(what)[:300])
    assert ctype.startswith("application/json"), (status, ctype, body[:200])
    assert "detail" in json.loads(body)


# ------------------------------------------------------------------------------------ breakers


def _image(draw, body):
    choice = draw(st.integers(0, 3))
    if choice == 0:
        body.pop("b64img")
    elif choice == 1:
        body["b64img"] = draw(st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2), st.none()))
    elif choice == 2:
        body["b64img"] = draw(st.sampled_from(BAD_IMAGES))
    else:
        body["b64img"] = _b64(draw(st.binary(max_size=200)))


def _type(draw, body):
    body["type"] = draw(st.one_of(ANY_TEXT.filter(lambda t: t not in TYPES), st.integers(), st.none(),
                                  st.sampled_from(["VIT_B", "vit_b ", "sam", "vit_x"])))


def _url(draw, body):
    body["checkpoint_url"] = draw(st.one_of(st.sampled_from(BAD_URLS), st.integers(),
                                            st.lists(st.integers(), max_size=2), ANY_TEXT.map(lambda t: "zz" + t)))


def _bbox(draw, body):
    choice = draw(st.integers(0, 3))
    if choice == 0:  # wrong length
        body["bbox"] = draw(st.lists(st.integers(0, 60), min_size=1, max_size=9).filter(lambda b: len(b) != 4))
    elif choice == 1:  # not an int somewhere
        box = [2, 3, 30, 40]
        box[draw(st.integers(0, 3))] = draw(NOT_INT)
        body["bbox"] = box
    elif choice == 2:  # x1 < x0 or y1 < y0
        x0, y0 = draw(st.integers(-100, 100)), draw(st.integers(-100, 100))
        body["bbox"] = [x0, y0, x0 - draw(st.integers(1, 50)), y0 + 5] if draw(st.booleans()) else \
            [x0, y0, x0 + 5, y0 - draw(st.integers(1, 50))]
    else:  # outside the 64 x 64 image
        a, b = draw(st.integers(64, 2**31 - 100)), draw(st.integers(0, 40))
        body["bbox"] = draw(st.sampled_from([[a, b, a + 10, b + 10], [b, a, b + 10, a + 10], [-a - 10, b, -a, b + 5]]))


def _points(draw, body):
    choice = draw(st.integers(0, 5))
    n = draw(st.integers(1, 4))
    coords = [[draw(st.integers(0, 63)), draw(st.integers(0, 63))] for _ in range(n)]
    labels = [draw(st.integers(0, 1)) for _ in range(n)]
    if choice == 0:  # a point of the wrong length
        coords[0] = draw(st.lists(st.integers(0, 60), max_size=5).filter(lambda p: len(p) != 2))
    elif choice == 1:  # a coordinate that is no int
        coords[0][draw(st.integers(0, 1))] = draw(NOT_INT)
    elif choice == 2:  # outside the image
        coords[0][draw(st.integers(0, 1))] = draw(st.one_of(st.integers(64, 2**31 - 1), st.integers(-(2**31), -1)))
    elif choice == 3:  # labels: wrong count, missing, or not 0 / 1
        labels = draw(st.one_of(st.none(), st.lists(st.integers(0, 1), max_size=6).filter(lambda l: len(l) != n),
                                st.just([draw(st.integers(2, 2**31 - 1))] * n), st.just([-1] * n),
                                st.just([draw(NOT_INT)] * n)))
    elif choice == 4:  # too many points
        coords, labels = [[5, 5]] * 1025, [1] * 1025
    else:  # labels without points
        body.pop("bbox", None)
        coords, labels = draw(st.sampled_from([None, []])), [1]
    body["point_coords"], body["point_labels"] = coords, labels


def _empty(draw, body):
    for key in ("bbox", "point_coords", "point_labels"):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            body.pop(key, None)
        else:
            body[key] = None if choice == 1 else []


def _multimask(draw, body):
    body["multimask_output"] = draw(st.sampled_from(["maybe", [1], {"a": 1}, 2, -1, 0.5, "2"]))


HUGE = st.sampled_from([2**31, 2**63, 2**64, 2**100, 10**400, -(2**31) - 1, -(2**63) - 1, -(10**400),
                        float("nan"), float("inf"), -float("inf")])


def _huge(draw, body):
    """A number out of every range (int64, float64) or not finite, in a box, a point or a label."""
    where = draw(st.sampled_from(["bbox", "point", "label"]))
    if where == "bbox":
        body["bbox"] = [2, 3, 30, 40]
        body["bbox"][draw(st.integers(0, 3))] = draw(HUGE)
    elif where == "point":
        body["point_coords"], body["point_labels"] = [[10, 12]], [1]
        body["point_coords"][0][draw(st.integers(0, 1))] = draw(HUGE)
    else:
        body["point_coords"], body["point_labels"] = [[10, 12]], [draw(HUGE)]


PROMPT_BREAKERS = [_image, _type, _url, _bbox, _points, _empty, _multimask, _huge]


def _noise(draw, body):
    """Harmless changes: unknown fields with any JSON, an ignored b64mask."""
    for _ in range(draw(st.integers(0, 2))):
        body["x_" + draw(st.text(max_size=5))] = draw(JSON_VALUES)
    if draw(st.booleans()):
        body["b64mask"] = draw(st.one_of(st.none(), st.text(max_size=8)))


@st.composite
def malformed_prompts(draw, first):
    """A valid prompt broken by ``first`` and up to two more breakers, plus harmless noise."""
    body = valid_prompt()
    if draw(st.booleans()):
        body["bbox"] = [2, 3, 30, 40]
    first(draw, body)
    for breaker in draw(st.lists(st.sampled_from(PROMPT_BREAKERS), max_size=2, unique=True)):
        breaker(draw, body)
    _noise(draw, body)
    return route(draw, "/"), body


# ------------------------------------------------------------------------------------ the fuzz
# (one run per breaker: Hypothesis favours the first elements of a choice, so a mix of all of
# them would rarely exercise the last ones)


@pytest.mark.parametrize("breaker", PROMPT_BREAKERS, ids=lambda f: f.__name__.strip("_"))
@settings(max_examples=15, **FUZZ)
@given(data=st.data())
def test_malformed_prompts_get_4xx(server, breaker, data):
    path, body = data.draw(malformed_prompts(breaker))
    assert_client_error(post(server, path, body), body)


def _automask_number(draw, body):
    key, bad = draw(st.sampled_from([
        ("points_per_side", st.one_of(st.integers(65, 2**40), st.integers(-(2**40), 0), NOT_INT)),
        ("points_per_batch", st.one_of(st.integers(1025, 2**40), st.integers(-(2**40), 0), NOT_INT)),
        ("pred_iou_thresh", st.sampled_from([float("nan"), float("inf"), -float("inf"), "x", [1]])),
        ("stability_score_thresh", st.sampled_from([float("nan"), float("inf"), "high"])),
        ("stability_score_offset", st.sampled_from([float("nan"), -float("inf")])),
        ("box_nms_thresh", st.sampled_from([float("nan"), float("inf"), {"a": 1}])),
        ("crop_nms_thresh", st.sampled_from([float("nan"), None])),
        ("crop_overlap_ratio", st.sampled_from([float("inf"), "x"])),
        ("min_mask_region_area", st.one_of(st.integers(-(2**40), -1), NOT_INT)),
        ("crop_n_layers", st.one_of(st.integers(-(2**40), -1), NOT_INT)),
        ("include_image_edge", st.sampled_from(["maybe", [True], 7])),
    ]))
    body[key] = draw(bad)


def _output_type(draw, body):
    valid = {"single mask", "multi-mask (all)", "multi-mask (largest)", "multi-mask (smallest)",
             "multi-mask (best quality)"}
    body["output_type"] = draw(st.one_of(ANY_TEXT.filter(lambda t: t.strip().lower() not in valid),
                                         st.integers(), st.none(), st.just("x" * 500)))


def _small_image(draw, body):
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 64))
    body["b64img"] = _b64(_encode(Image.fromarray(RGB[:rows, :cols].copy() if draw(st.booleans())
                                                  else RGB[:cols, :rows].copy())))


AUTOMASK_BREAKERS = [_image, _type, _url, _automask_number, _output_type, _small_image]


@st.composite
def malformed_automasks(draw, first):
    body = {"type": "vit_b", "b64img": GOOD, "points_per_side": 16, "points_per_batch": 64,
            "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "output_type": "Multi-mask (smallest)",
            "include_image_edge": False}
    first(draw, body)
    for breaker in draw(st.lists(st.sampled_from(AUTOMASK_BREAKERS), max_size=2, unique=True)):
        breaker(draw, body)
    _noise(draw, body)
    return route(draw, "/automask/"), body


@pytest.mark.parametrize("breaker", AUTOMASK_BREAKERS, ids=lambda f: f.__name__.strip("_"))
@settings(max_examples=12, **FUZZ)
@given(data=st.data())
def test_malformed_automasks_get_4xx(server, breaker, data):
    path, body = data.draw(malformed_automasks(breaker))
    assert_client_error(post(server, path, body), body)


WEIGHTS_ANSWERS = ("Refused to register ", "Cannot register ", "Model file with the name ", "Model file with the url ")


@settings(max_examples=60, **FUZZ)
@given(path=st.builds(lambda p, s: p + ("/weights/" if s else "/weights"), st.sampled_from(PREFIXES), st.booleans()),
       body=st.fixed_dictionaries({}, optional={
           "type": st.one_of(st.sampled_from(TYPES), JSON_SCALARS),
           "name": st.one_of(ANY_TEXT, st.just("  "), st.just("a" * 300), JSON_SCALARS),
           "url": st.one_of(st.sampled_from(BAD_URLS + [EMBEDDED_URL]), ANY_TEXT, JSON_SCALARS)}))
def test_weights_registration_never_fails(server, path, body):
    status, ctype, answer = post(server, path, body)
    if status == 200:  # samapi's contract: text/plain outcome of a well-formed registration
        text = answer.decode("utf-8")
        assert ctype.startswith("text/plain")
        assert text.startswith(WEIGHTS_ANSWERS) or text.endswith(" is registered."), text
        assert body["url"] == EMBEDDED_URL or not text.endswith(" is registered."), text
    else:
        assert_client_error((status, ctype, answer), body)
        assert status == 422


QUERY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=60, **FUZZ)
@given(prefix=st.sampled_from(PREFIXES), endpoint=st.sampled_from(["/weights/", "/weights/cancel/", "/progress/"]),
       slash=st.booleans(), params=st.lists(st.tuples(st.sampled_from(["type", "x", "", "type[]"]),
                                                       st.one_of(st.sampled_from(TYPES), QUERY_TEXT)), max_size=3),
       raw=st.sampled_from(["", "%00", "%ff%fe", "%", "%zz", "type=%00", "type=vit_b%00", "&&==", "type"]))
def test_gets_with_any_query(server, prefix, endpoint, slash, params, raw):
    path = prefix + (endpoint if slash else endpoint.rstrip("/"))
    query = "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" for k, v in params)
    query = "&".join(q for q in (query, raw) if q)
    status, ctype, body = server.request("GET", f"{path}?{query}" if query else path)
    types = [v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if k == "type"]
    if endpoint == "/weights/" and types and types[-1] not in TYPES:  # the last one counts
        assert_client_error((status, ctype, body), query)
        assert status == 422
    else:
        assert status == 200, (path, query, body[:200])
        if endpoint == "/weights/":
            rows = json.loads(body)
            assert rows and all(set(r) == {"type", "name", "url"} for r in rows)


@settings(max_examples=60, **FUZZ)
@given(endpoint=st.sampled_from(["/", "/automask/", "/weights/"]), prefix=st.sampled_from(PREFIXES),
       body=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                      st.sampled_from([b"[" * 100_000, b"{" * 5000, b'{"type":"vit_b","b64img":', b"\xff\xfe\x00{",
                                       b'{"type":"vit_b","b64img":"' + GOOD[:50].encode(), b"null", b"1e999999",
                                       b'{"b64img":"' + b"1" * 5000 + b'"}', b"9" * 5000])),
       content_type=st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                     "application/vnd+json", None]))
def test_raw_bodies_get_4xx(server, endpoint, prefix, body, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = server.request("POST", prefix + endpoint, body, headers=headers)
    assert_client_error(answer, body[:100])


@settings(max_examples=30, **FUZZ)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       endpoint=st.sampled_from(["/", "/automask/", "/weights/cancel/", "/progress/", "/version/", "/nope/"]),
       prefix=st.sampled_from(PREFIXES))
def test_other_methods_and_paths(server, method, endpoint, prefix):
    status, _, body = server.request(method, prefix + endpoint)
    if method == "GET" and endpoint in ("/weights/cancel/", "/progress/", "/version/"):
        assert status == 200
    else:
        assert status in (404, 405), (method, prefix + endpoint, status, body[:100])


def test_every_listed_bad_url_and_image_gets_4xx(server):
    automask = {"type": "vit_b", "b64img": GOOD, "output_type": "Single mask"}
    for url in BAD_URLS:  # e.g. file:///a%00b was a 500 "embedded null byte"
        for path, body in (("/sam/", valid_prompt()), ("/automask/", automask)):
            assert_client_error(post(server, path, {**body, "checkpoint_url": url}), url)
        status, _, answer = post(server, "/weights/", {"type": "vit_b", "name": "x", "url": url})
        assert status == 422 or answer.decode().startswith(("Refused to register x", "Cannot register x")), answer
    for b64 in BAD_IMAGES:
        for path, body in (("/sam/", valid_prompt()), ("/sam/automask/", automask)):
            assert_client_error(post(server, path, {**body, "b64img": b64}), b64[:50])


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_odd_images_are_converted_or_refused(server, name):
    b64 = _b64(ODD_IMAGES[name])
    status, _, body = post(server, "/sam/", {**valid_prompt(), "b64img": b64, "point_coords": [[0, 0]]})
    assert status == 200 or (status == 400 and "image" in json.loads(body)["detail"]), (status, body[:300])
    status, _, body = post(server, "/sam/automask/", {"type": "vit_b", "b64img": b64,
                                                      "output_type": "Multi-mask (all)"})
    assert status == 200 or (status == 400 and "image" in json.loads(body)["detail"]), (status, body[:300])


@pytest.mark.parametrize("size", [(1 << 20) + 1, 3 << 20])
def test_oversized_bodies_get_413(server, size):
    body = b'{"type":"vit_b","b64img":"' + b"A" * size + b'"}'
    for path in ("/sam/", "/automask", "/sam/weights/"):
        status, _, answer = post(server, path, body)
        assert status == 413 and "--max-request-mb" in json.loads(answer)["detail"]
