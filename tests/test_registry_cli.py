"""Model registry and ``pathosam models`` CLI. No test touches the network or real weights."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pathosam import cli, registry

REFERENCE_NAMES = [
    "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology",
    "vit_b_histopathology_decoder", "vit_l_histopathology_decoder", "vit_h_histopathology_decoder",
    "vit_b_histopathology_semantic_decoder",
    "vit_b", "vit_l", "vit_h",
]
HEX_LEN = {"xxh128": 32, "sha256": 64}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to access the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache directory for every test."""
    d = tmp_path / "cache"
    monkeypatch.setenv("PATHOSAM_CACHE_DIR", str(d))
    return d


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("PATHOSAM_OFFLINE", "1")


@pytest.fixture(params=["xxh128", "sha256"])
def fake_model(request, monkeypatch, tmp_path):
    """A fake registry entry (plus a decoder) whose hash matches a small temp file."""
    algo = request.param
    weights = tmp_path / "fake_weights.pth"
    weights.write_bytes(b"not really a checkpoint\n" * 1000)
    decoder = tmp_path / "fake_decoder.pth"
    decoder.write_bytes(b"decoder bytes")
    models = dict(registry.MODELS)
    models["fake"] = registry.ModelEntry(
        "fake", "https://example.invalid/fake.pth", f"{algo}:{registry.file_hash(weights, algo)}",
        "a fake model", decoder="fake_decoder", approx_size_mb=1,
    )
    models["fake_decoder"] = registry.ModelEntry(
        "fake_decoder", "https://example.invalid/fake_decoder.pth",
        f"{algo}:{registry.file_hash(decoder, algo)}", "its decoder",
    )
    monkeypatch.setattr(registry, "MODELS", models)
    return weights, decoder


def _cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


# ---------------------------------------------------------------------------------------------
# registry


def test_reference_names_registered():
    for name in REFERENCE_NAMES:
        assert name in registry.MODELS
        assert registry.is_registered(name)
    assert set(REFERENCE_NAMES) <= set(registry.names())


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_entry_well_formed(name):
    e = registry.MODELS[name]
    assert e.name == name
    assert e.url.startswith("https://") or (e.bundled and not e.url)  # bundled: shipped in the package
    assert e.description
    algo, _, hexdigest = e.hash.partition(":")
    assert algo in HEX_LEN, e.hash
    assert re.fullmatch(f"[0-9a-f]{{{HEX_LEN[algo]}}}", hexdigest), e.hash
    for ref in (e.decoder, e.semantic_decoder):
        assert ref is None or ref in registry.MODELS


def test_decoders_of_reference_models():
    for size in "blh":
        assert registry.get(f"vit_{size}_histopathology").decoder == f"vit_{size}_histopathology_decoder"
    assert registry.get("vit_b_histopathology").semantic_decoder == "vit_b_histopathology_semantic_decoder"


def test_get_unknown():
    with pytest.raises(KeyError, match="vit_b_histopathology"):
        registry.get("nope")


def test_cache_dir_env(cache):
    assert registry.cache_dir() == cache
    assert registry.path("vit_b") == cache / "models" / "vit_b"


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("PATHOSAM_CACHE_DIR")
    import platformdirs

    assert registry.cache_dir() == Path(platformdirs.user_cache_dir("pathosam"))


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)])
def test_offline_flag(monkeypatch, value, expected):
    monkeypatch.setenv("PATHOSAM_OFFLINE", value)
    assert registry.offline() is expected


def test_fetch_offline_missing(offline, cache):
    with pytest.raises(registry.ModelNotAvailableError) as info:
        registry.fetch("vit_b_histopathology")
    msg = str(info.value)
    assert registry.get("vit_b_histopathology").url in msg
    assert str(cache / "models" / "vit_b_histopathology") in msg
    assert "pathosam models import" in msg
    assert _cache_files(cache) == []


def test_fetch_download_false(cache):
    with pytest.raises(registry.ModelNotAvailableError):
        registry.fetch("vit_b", download=False)


def test_fetch_download_error_is_not_available(monkeypatch, cache):
    def fail(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    with pytest.raises(registry.ModelNotAvailableError, match="no route to host") as info:
        registry.fetch("vit_b", progress=False)
    assert str(registry.path("vit_b")) in str(info.value)
    assert _cache_files(cache) == []


def test_fetch_returns_cached_file(offline, fake_model):
    weights, _ = fake_model
    target = registry.import_file("fake", weights)
    assert registry.fetch("fake") == target


def test_file_hash_sha256(tmp_path):
    f = tmp_path / "f.bin"
    data = os.urandom(100_000)
    f.write_bytes(data)
    assert registry.file_hash(f, "sha256") == hashlib.sha256(data).hexdigest()
    assert len(registry.file_hash(f)) == 32
    with pytest.raises(ValueError):
        registry.file_hash(f, "md5")


def test_import_wrong_hash(tmp_path, cache):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"definitely not the ViT-B decoder")
    with pytest.raises(registry.HashMismatchError):
        registry.import_file("vit_b_histopathology_decoder", bogus)
    assert _cache_files(cache) == []
    assert not registry.path("vit_b_histopathology_decoder").exists()


def test_import_matching_hash(fake_model, cache):
    weights, _ = fake_model
    target = registry.import_file("fake", weights)
    assert target == cache / "models" / "fake"
    assert target.read_bytes() == weights.read_bytes()
    assert _cache_files(cache) == [target]  # no .partial left
    registry.verify_file("fake", target)


def test_import_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        registry.import_file("vit_b", tmp_path / "absent.pth")


def test_import_no_verify(tmp_path):
    f = tmp_path / "x.pth"
    f.write_bytes(b"unverified")
    target = registry.import_file("vit_b", f, verify=False)
    assert target.read_bytes() == b"unverified"


def test_verify_cache(fake_model, tmp_path):
    weights, _ = fake_model
    registry.import_file("fake", weights)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"corrupt")
    registry.import_file("fake_decoder", bad, verify=False)
    status = registry.verify_cache()
    assert set(status) == set(registry.MODELS)
    assert status["fake"] == "ok"
    assert status["fake_decoder"].startswith("hash mismatch")
    assert status["vit_b"] == "missing"
    assert registry.verify_cache(["fake"]) == {"fake": "ok"}


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_version(capsys):
    assert cli.main(["--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out


def test_cli_no_command(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_cli_list(capsys, cache, fake_model):
    weights, _ = fake_model
    registry.import_file("fake", weights)
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in REFERENCE_NAMES:
        assert name in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["fake"].endswith(" yes")
    assert lines["fake_decoder"].endswith(" no")
    assert lines["vit_b"].endswith(" no")
    assert "~375 MB" in lines["vit_b_histopathology"]
    assert "PathoSAM ViT-B generalist" in lines["vit_b_histopathology"]
    assert str(cache / "models") in out.splitlines()[-1]


def test_cli_path(capsys, cache):
    assert cli.main(["models", "path", "vit_l"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / "vit_l")


def test_cli_unknown_name(capsys):
    for argv in (["models", "path", "vit_x"], ["models", "fetch", "vit_x"], ["models", "verify", "vit_x"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "'vit_x'" in err and "vit_b_histopathology" in err and "Traceback" not in err


def test_cli_import(capsys, fake_model, cache):
    weights, _ = fake_model
    assert cli.main(["models", "import", "fake", str(weights)]) == 0
    assert (cache / "models" / "fake").read_bytes() == weights.read_bytes()
    assert str(cache / "models" / "fake") in capsys.readouterr().out


def test_cli_import_mismatch(capsys, tmp_path, cache):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"junk")
    assert cli.main(["models", "import", "vit_b", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err
    assert _cache_files(cache) == []
    assert cli.main(["models", "import", "vit_b", str(bogus), "--no-verify"]) == 0
    assert registry.path("vit_b").is_file()


def test_cli_import_missing_file(capsys, tmp_path):
    assert cli.main(["models", "import", "vit_b", str(tmp_path / "absent")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_verify(capsys, fake_model, tmp_path):
    weights, decoder = fake_model
    assert cli.main(["models", "verify"]) == 0  # nothing cached: all missing, no error
    assert "missing" in capsys.readouterr().out
    registry.import_file("fake", weights)
    assert cli.main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fake\s+ok$", out, re.M)
    bad = tmp_path / "bad"
    bad.write_bytes(b"bad")
    registry.import_file("fake_decoder", bad, verify=False)
    assert cli.main(["models", "verify"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^fake_decoder\s+MISMATCH", captured.out, re.M)
    assert "Traceback" not in captured.err


def test_cli_fetch_offline(capsys, offline, cache):
    assert cli.main(["models", "fetch", "vit_b_histopathology"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # the model and its decoder are both attempted, each with the manual-placement hint
    for name in ("vit_b_histopathology", "vit_b_histopathology_decoder"):
        assert registry.get(name).url in err
        assert str(cache / "models" / name) in err
    assert "pathosam models import" in err


def test_cli_fetch_cached_with_decoder(capsys, offline, fake_model, cache):
    weights, decoder = fake_model
    registry.import_file("fake", weights)
    assert cli.main(["models", "fetch", "fake"]) == 1  # decoder missing
    captured = capsys.readouterr()
    assert str(cache / "models" / "fake") in captured.out
    assert "fake_decoder" in captured.err
    registry.import_file("fake_decoder", decoder)
    assert cli.main(["models", "fetch", "fake"]) == 0
    out = capsys.readouterr().out
    assert "fake:" in out and "fake_decoder:" in out
    assert cli.main(["models", "fetch", "fake", "--no-decoder"]) == 0


def test_python_m_pathosam(cache):
    env = dict(os.environ, PATHOSAM_CACHE_DIR=str(cache), PATHOSAM_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pathosam", "models", "list"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vit_b_histopathology" in proc.stdout
    assert str(cache / "models") in proc.stdout
