"""Weights registry: resolution order, offline messages, real (loopback) resumable downloads, the CLI."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from s2d_model import weights as W


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("S2D_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    return tmp_path / "home"


def test_cache_dir_honours_s2d_home_then_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("S2D_HOME", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert W.cache_dir() == tmp_path / "hf" / "s2d"
    monkeypatch.setenv("S2D_HOME", str(tmp_path / "s2d"))
    assert W.cache_dir() == tmp_path / "s2d"


def test_missing_weights_say_what_to_get_and_where(home):
    with pytest.raises(W.WeightsNotFound) as e:
        W.resolve("retinaface-mobilenet")
    msg = str(e.value)
    assert "mobilenet0.25_Final.pth" in msg and "https://github.com/cunjian/pytorch_face_landmark" in msg
    assert str(home / "retinaface-mobilenet" / "mobilenet0.25_Final.pth") in msg and W.ENV_DIR in msg
    with pytest.raises(W.WeightsNotFound, match="unknown weights 'nope'.*s2d-dfew"):
        W.resolve("nope")
    with pytest.raises(W.WeightsNotFound, match="weights file not found: /no/such/file.pth"):
        W.resolve("/no/such/file.pth")


def test_resolution_order_path_import_envdir_cache(home, tmp_path, monkeypatch, detector_weights):
    assert W.resolve(str(detector_weights)) == detector_weights
    env = tmp_path / "env"
    env.mkdir()
    (env / "mobilenet0.25_Final.pth").write_bytes(b"x")
    monkeypatch.setenv(W.ENV_DIR, str(env))
    assert W.resolve("retinaface-mobilenet") == env / "mobilenet0.25_Final.pth"
    W.import_file(detector_weights, "retinaface-mobilenet")
    assert W.resolve("retinaface-mobilenet") == detector_weights.resolve()
    W.import_file(detector_weights, "my-detector")
    assert W.resolve("my-detector") == detector_weights.resolve()
    with pytest.raises(W.WeightsNotFound, match="cannot import"):
        W.import_file(tmp_path / "missing.pth", "x")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single-range support (enough for resumable downloads)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_is_resumable_and_sha_checked(home, server, monkeypatch, detector_weights):
    root, url = server
    payload = detector_weights.read_bytes()
    (root / "mnet.pth").write_bytes(payload)
    spec = dataclasses.replace(W.KNOWN["retinaface-mobilenet"], url=f"{url}/mnet.pth")
    monkeypatch.setitem(W.KNOWN, spec.name, spec)
    dest = W.cached_path(spec)
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(payload[:1000])  # an interrupted earlier download
    got = W.download(spec.name, progress=False)
    assert got == dest and hashlib.sha256(got.read_bytes()).hexdigest() == spec.sha256
    assert W.resolve(spec.name) == dest

    (root / "bad.pth").write_bytes(b"corrupted")
    bad = dataclasses.replace(spec, url=f"{url}/bad.pth")
    monkeypatch.setitem(W.KNOWN, spec.name, bad)
    dest.unlink()
    with pytest.raises(W.WeightsNotFound, match="sha256 mismatch"):
        W.download(spec.name, progress=False)
    assert not dest.exists()

    gone = dataclasses.replace(spec, url=f"{url}/missing.pth")
    monkeypatch.setitem(W.KNOWN, spec.name, gone)
    with pytest.raises(W.WeightsNotFound, match="download of 'retinaface-mobilenet' failed.*HTTPError"):
        W.download(spec.name, progress=False)


def test_face_api_s_manifest_and_binary_download_together_sha_checked(home, server, monkeypatch, fixtures_dir):
    """The registry's faceapi-expression: its pinned manifest and the .bin beside it, each sha256-checked (the
    files served here are the fixture's, byte for byte the upstream ones), then resolved and loaded as they are."""
    root, url = server
    spec = W.KNOWN["faceapi-expression"]
    assert "ad61f77ea2962809bed52b5b18966fea80ab1273/model/" in spec.url and len(spec.also) == 1
    for name in (spec.filename, spec.also[0][0]):
        (root / name).write_bytes((fixtures_dir / "weights/face-api" / name).read_bytes())
    local = dataclasses.replace(spec, url=f"{url}/{spec.filename}",
                                also=((spec.also[0][0], f"{url}/{spec.also[0][0]}", spec.also[0][2]),))
    monkeypatch.setitem(W.KNOWN, spec.name, local)
    got = W.download(spec.name, progress=False)
    assert got == W.resolve(spec.name) and (got.parent / "face_expression_model.bin").is_file()
    from s2d_model.faceapi import load_expression_net

    load_expression_net(got)
    (got.parent / "face_expression_model.bin").write_bytes(b"stale")  # a damaged binary is fetched again
    (root / spec.also[0][0]).write_bytes(b"corrupted upstream")
    with pytest.raises(W.WeightsNotFound, match="face_expression_model.bin: sha256 mismatch"):
        W.download(spec.name, progress=False)


def _s2d(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1])


def test_cli_weights_commands(home, detector_weights):
    import os

    env = {**os.environ, "S2D_HOME": str(home)}
    out = _s2d("weights", "list", env=env)
    assert out.returncode == 0 and "s2d-dfew" in out.stdout and "retinaface-mobilenet" in out.stdout
    out = _s2d("weights", "path", "s2d-dfew", env=env)
    assert out.returncode == 1 and "cyinen/S2D" in out.stderr and "s2d_dfew.pth" in out.stderr
    out = _s2d("weights", "import", str(detector_weights), "--name", "retinaface-mobilenet", env=env)
    assert out.returncode == 0, out.stderr
    out = _s2d("weights", "path", "retinaface-mobilenet", env=env)
    assert out.returncode == 0 and out.stdout.strip() == str(detector_weights.resolve())
    out = _s2d("version", env=env)
    assert out.returncode == 0 and "s2d-pipeline" in out.stdout and "torch" in out.stdout
