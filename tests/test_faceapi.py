"""s2d_model.faceapi: face-api's expression net against the JavaScript reference outputs, and its weight reader."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2d_model.faceapi import (
    CLASSES,
    WeightsFileError,
    expression_probs,
    load_expression_net,
    pad_to_square,
    read_tfjs,
    resize_bilinear_tf,
    to_input,
)

MANIFEST = "face_expression_model-weights_manifest.json"
BIN = "face_expression_model.bin"


@pytest.fixture(scope="module")
def faceapi_dir(fixtures_dir) -> Path:
    return fixtures_dir / "weights" / "face-api"


@pytest.fixture(scope="module")
def reference(faceapi_dir) -> dict:
    return json.loads((faceapi_dir / "reference.json").read_text())


@pytest.fixture(scope="module")
def net(faceapi_dir):
    return load_expression_net(faceapi_dir / MANIFEST)


@pytest.fixture(scope="module")
def crops(faceapi_dir, reference) -> dict[str, tuple[np.ndarray, dict]]:
    """name -> (RGB uint8 crop, its reference.json entry), for every crop PNG in reference/."""
    entries = {c["name"]: c for c in reference["crops"]}
    pngs = sorted((faceapi_dir / "reference").glob("*.png"))
    assert pngs and {p.name for p in pngs} == set(entries)
    out = {}
    for png in pngs:
        rgb = np.asarray(Image.open(png).convert("RGB"))
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == entries[png.name]["rgb_sha256"], png.name
        out[png.name] = rgb, entries[png.name]
    return out


def _probs(net, crops, transform=lambda rgb: rgb) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (float64 probabilities of ``transform(crop)``, reference probabilities)."""
    names = list(crops)
    probs = expression_probs(net, [np.ascontiguousarray(transform(crops[n][0])) for n in names])
    return {n: (p.astype(np.float64), np.array(crops[n][1]["expressions"])) for n, p in zip(names, probs)}


# --- parity with face-api's JavaScript ---------------------------------------------------------------------------

def test_classes_match_reference(reference):
    assert list(CLASSES) == reference["expression_labels"]


def test_probabilities_match_reference(net, crops):
    diffs = {n: np.abs(p - ref).max() for n, (p, ref) in _probs(net, crops).items()}
    assert max(diffs.values()) < 1e-4, diffs


def test_log_probabilities_match_reference(net, crops):
    """Stricter than the probabilities: on saturated crops (p = 0.9999999) the logs still pin every logit gap."""
    diffs = {n: np.abs(np.log(p) - np.log(ref)).max() for n, (p, ref) in _probs(net, crops).items()}
    assert max(diffs.values()) < 1e-3, diffs


def test_input_checksums_match_reference(crops):
    for name, (rgb, entry) in crops.items():
        x = to_input([rgb]).double()
        check = entry["input_check"]["112"]
        assert x.sum().item() == pytest.approx(check["sum"], rel=1e-6), name
        assert (x**2).sum().item() == pytest.approx(check["sum_sq"], rel=1e-6), name


@pytest.mark.parametrize("mistake", ["flip", "bgr"])
def test_parity_catches_flip_and_channel_order(net, crops, mistake):
    """Feeding a mirrored or BGR crop breaks parity, so the tests above would catch either mistake."""
    transform = (lambda rgb: rgb[:, ::-1]) if mistake == "flip" else (lambda rgb: rgb[..., ::-1])
    probs = _probs(net, crops, transform)
    diffs = {n: np.abs(p - ref).max() for n, (p, ref) in probs.items()}
    assert sum(d > 1e-3 for d in diffs.values()) > len(diffs) / 2, diffs  # saturated crops barely move
    log_diffs = {n: np.abs(np.log(p) - np.log(ref)).max() for n, (p, ref) in probs.items()}
    assert min(log_diffs.values()) > 0.5, log_diffs  # in log space every crop gives it away


@pytest.mark.parametrize("name, label", [("0-f15-hao-ph.png", "happy"), ("0-f1-su-ph.png", "surprised")])
def test_labelled_crops(net, crops, name, label):
    probs = expression_probs(net, [crops[name][0]])
    assert probs.shape == (1, 7) and probs.dtype == np.float32
    assert CLASSES[int(probs[0].argmax())] == label


# --- preprocessing -----------------------------------------------------------------------------------------------

def test_resize_is_legacy_tf_bilinear():
    # tfjs's own resize_bilinear_test ("simple alignCorners=false"): 2x2 -> 3x3 samples rows/cols at 0, 2/3, 4/3
    x = torch.tensor([[2.0, 2.0], [4.0, 4.0]])
    expected = torch.tensor([[2.0] * 3, [10 / 3] * 3, [4.0] * 3])
    torch.testing.assert_close(resize_bilinear_tf(x, 3, 3), expected)


def test_pad_to_square_puts_odd_pixel_bottom_right():
    x = torch.ones(1, 2, 5)  # pad 3 rows: 1 above, 2 below
    assert pad_to_square(x)[0, :, 0].tolist() == [0, 1, 1, 0, 0]
    x = torch.ones(1, 4, 1)  # pad 3 columns: 1 left, 2 right
    assert pad_to_square(x)[0, 0].tolist() == [0, 1, 0, 0]


def test_to_input_batch_and_list_agree(crops):
    rgbs = [rgb for rgb, _ in crops.values()]
    listed = to_input(rgbs)
    assert listed.shape == (len(rgbs), 3, 112, 112) and listed.dtype == torch.float32
    torch.testing.assert_close(listed[1:2], to_input(rgbs[1][None]), rtol=0, atol=0)
    square = np.zeros((2, 112, 112, 3), np.uint8)  # already 112x112: no resize, only normalisation
    torch.testing.assert_close(to_input(square)[0, :, 0, 0], -torch.tensor([122.782, 117.001, 104.298]) / 255)
    with pytest.raises(ValueError):
        to_input([rgbs[0].astype(np.float32) / 255])


# --- weights files -----------------------------------------------------------------------------------------------

def test_read_tfjs_dequantises(faceapi_dir):
    tensors = read_tfjs(faceapi_dir / MANIFEST)
    spec = json.loads((faceapi_dir / MANIFEST).read_text())[0]["weights"]
    assert list(tensors) == [w["name"] for w in spec] and len(tensors) == 49
    assert sum(t.numel() for t in tensors.values()) == 323_687
    first = spec[0]
    q = np.frombuffer((faceapi_dir / BIN).read_bytes()[:10], np.uint8)
    quant = first["quantization"]
    expected = (q * quant["scale"] + quant["min"]).astype(np.float32)
    assert tensors[first["name"]].shape == tuple(first["shape"])
    assert tensors[first["name"]].flatten()[:10].numpy().tolist() == expected.tolist()


def test_read_tfjs_float32_and_uint8(tmp_path):
    floats = np.array([1.5, -2.25, 3.0], "<f4")
    (tmp_path / "w.bin").write_bytes(floats.tobytes() + bytes([0, 255]))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [3], "dtype": "float32"},
        {"name": "b", "shape": [2, 1], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}}]}]))
    tensors = read_tfjs(manifest)
    assert tensors["a"].tolist() == floats.tolist()
    assert tensors["b"].tolist() == [[-1.0], [126.5]]


def _copy_weights(faceapi_dir: Path, tmp_path: Path) -> tuple[Path, Path, list]:
    """Writable copies of the expression net's files in tmp_path -> (manifest, bin, parsed manifest)."""
    manifest, bin_ = tmp_path / MANIFEST, tmp_path / BIN
    manifest.write_bytes((faceapi_dir / MANIFEST).read_bytes())
    bin_.write_bytes((faceapi_dir / BIN).read_bytes())
    return manifest, bin_, json.loads(manifest.read_text())


def _weight(groups: list, name: str) -> dict:
    return next(w for w in groups[0]["weights"] if w["name"] == name)


def _truncate(m, b, groups):
    b.write_bytes(b.read_bytes()[:-1])
    return b


def _one_byte_long(m, b, groups):
    b.write_bytes(b.read_bytes() + b"\0")
    return b


def _shape_changed(m, b, groups):  # same number of values, so only the net's shape check can tell
    _weight(groups, "dense0/conv0/filters")["shape"] = [3, 3, 32, 3]
    m.write_text(json.dumps(groups))
    return m


def _size_changed(m, b, groups):
    _weight(groups, "fc/bias")["shape"] = [8]
    m.write_text(json.dumps(groups))
    return m


def _tensor_removed(m, b, groups):  # from the manifest only: its bytes are left over
    groups[0]["weights"].remove(_weight(groups, "dense2/conv1/bias"))
    m.write_text(json.dumps(groups))
    return m


def _tensor_and_bytes_removed(m, b, groups):  # fc/bias is the last tensor: 7 float32
    groups[0]["weights"].remove(_weight(groups, "fc/bias"))
    m.write_text(json.dumps(groups))
    b.write_bytes(b.read_bytes()[:-28])
    return m


def _extra_tensor(m, b, groups):
    groups[0]["weights"].append({"name": "fc2/bias", "shape": [7], "dtype": "float32"})
    m.write_text(json.dumps(groups))
    b.write_bytes(b.read_bytes() + bytes(28))
    return m


def _not_json(m, b, groups):
    m.write_text("<html>404 Not Found</html>\n")
    return m


def _not_manifest(m, b, groups):
    m.write_text(json.dumps({"modelTopology": {}}))
    return m


def _missing_bin(m, b, groups):
    b.unlink()
    return b


def _unsupported_dtype(m, b, groups):
    _weight(groups, "fc/bias")["dtype"] = "int32"
    m.write_text(json.dumps(groups))
    return m


def _unsupported_quantization(m, b, groups):
    _weight(groups, "fc/weights")["quantization"]["dtype"] = "uint16"
    m.write_text(json.dumps(groups))
    return m


@pytest.mark.parametrize("damage, words", [
    (_truncate, "truncated"),
    (_one_byte_long, "too long"),
    (_shape_changed, "shape"),
    (_size_changed, "truncated"),
    (_tensor_removed, "too long"),
    (_tensor_and_bytes_removed, "missing tensor fc/bias"),
    (_extra_tensor, "unknown tensor"),
    (_not_json, "not JSON"),
    (_not_manifest, "not a tfjs weights manifest"),
    (_missing_bin, "cannot read"),
    (_unsupported_dtype, "int32"),
    (_unsupported_quantization, "uint16"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_damaged_weights_raise(faceapi_dir, tmp_path, damage, words):
    manifest, bin_, groups = _copy_weights(faceapi_dir, tmp_path)
    named = damage(manifest, bin_, groups)
    with pytest.raises(WeightsFileError) as err:
        load_expression_net(manifest)
    message = str(err.value)
    assert "\n" not in message and str(named) in message and words in message, message
