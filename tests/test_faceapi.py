"""s2d_model.faceapi: face-api's expression and face-recognition nets against the JavaScript reference outputs, and
their weight reader."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2d_model.faceapi import (
    CLASSES,
    RECOGNITION_INPUT_SIZE,
    FaceRecognitionNet,
    WeightsFileError,
    descriptors,
    expression_probs,
    load_expression_net,
    load_recognition_net,
    pad_to_square,
    read_tfjs,
    resize_bilinear_tf,
    tfjs_name,
    to_input,
)
from s2d_model.faceapi import _RECOGNITION_TFJS_NAMES

MANIFEST = "face_expression_model-weights_manifest.json"
BIN = "face_expression_model.bin"
RECOGNITION_MANIFEST = "face_recognition_model-weights_manifest.json"
RECOGNITION_BIN = "face_recognition_model.bin"


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


def _copy_weights(faceapi_dir: Path, tmp_path: Path, names=(MANIFEST, BIN)) -> tuple[Path, Path, list]:
    """Writable copies of a net's files (default: the expression net's) in tmp_path -> (manifest, bin, parsed
    manifest)."""
    manifest, bin_ = tmp_path / names[0], tmp_path / names[1]
    manifest.write_bytes((faceapi_dir / names[0]).read_bytes())
    bin_.write_bytes((faceapi_dir / names[1]).read_bytes())
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


# --- the recognition net (face descriptors) ----------------------------------------------------------------------

SAME_PERSON = ("single_face.png", "single_face_t1.5.png")  # the same man (reference.json's descriptor_distance note)


@pytest.fixture(scope="module")
def recognition_net(faceapi_dir):
    return load_recognition_net(faceapi_dir / RECOGNITION_MANIFEST)


@pytest.fixture(scope="module")
def ours(recognition_net, crops) -> dict[str, np.ndarray]:
    """name -> our descriptor of each reference crop (one batch)."""
    return dict(zip(crops, descriptors(recognition_net, [rgb for rgb, _ in crops.values()])))


def test_descriptors_match_reference(ours, crops):
    """face-api's computeFaceDescriptor within 1e-3 (measured: 3.4e-7, the reference's 7 significant digits)."""
    diffs = {n: np.abs(d - np.array(crops[n][1]["descriptor"])).max() for n, d in ours.items()}
    assert max(diffs.values()) < 1e-3, diffs


def test_descriptor_distances_match_reference(ours, reference):
    table = reference["descriptor_distance"]
    d = np.stack([ours[n] for n in table["order"]]).astype(np.float64)
    distances = np.linalg.norm(d[:, None] - d[None], axis=-1)
    assert np.abs(distances - np.array(table["matrix"])).max() < 1e-3


def test_recognition_input_checksums_match_reference(crops):
    for name, (rgb, entry) in crops.items():
        x = to_input([rgb], RECOGNITION_INPUT_SIZE).double()
        check = entry["input_check"]["150"]
        assert list(x.shape) == [1, 3, *check["shape"][1:3]] and check["shape"][3] == 3, name
        assert x.sum().item() == pytest.approx(check["sum"], rel=1e-6), name
        assert (x**2).sum().item() == pytest.approx(check["sum_sq"], rel=1e-6), name


@pytest.mark.parametrize("mistake", ["flip", "bgr"])
def test_descriptor_parity_catches_flip_and_channel_order(recognition_net, crops, mistake):
    """A mirrored or BGR crop moves every descriptor by > 0.02 (measured), far outside the 1e-3 parity bound."""
    transform = (lambda rgb: rgb[:, ::-1]) if mistake == "flip" else (lambda rgb: rgb[..., ::-1])
    got = descriptors(recognition_net, [np.ascontiguousarray(transform(rgb)) for rgb, _ in crops.values()])
    diffs = [np.abs(d - np.array(entry["descriptor"])).max() for d, (_, entry) in zip(got, crops.values())]
    assert min(diffs) > 1e-2, diffs


def test_same_person_is_closest(ours, crops):
    """The two crops of the one man (a photo and a video frame) are nearer each other than any two different
    people among the reference crops (the four posed stills are four subjects; multi_face_a/b two more)."""
    same = np.linalg.norm(ours[SAME_PERSON[0]] - ours[SAME_PERSON[1]])
    names = list(ours)
    different = {(a, b): np.linalg.norm(ours[a] - ours[b]) for i, a in enumerate(names) for b in names[i + 1:]
                 if {a, b} != set(SAME_PERSON)}
    assert same < min(different.values()), (same, min(different.items(), key=lambda kv: kv[1]))


def test_descriptors_batches_and_shapes(recognition_net, crops):
    rgbs = [rgb for rgb, _ in crops.values()]
    whole = descriptors(recognition_net, rgbs)
    assert whole.shape == (len(rgbs), 128) and whole.dtype == np.float32
    np.testing.assert_allclose(descriptors(recognition_net, rgbs, batch_size=3), whole, rtol=0, atol=1e-5)
    patch = np.ascontiguousarray(rgbs[0][:100, :120])  # an [N, H, W, 3] array works as a list does
    np.testing.assert_allclose(descriptors(recognition_net, np.stack([patch, patch])),
                               descriptors(recognition_net, [patch] * 2), rtol=0, atol=1e-5)
    assert descriptors(recognition_net, []).shape == (0, 128)
    with torch.inference_mode():
        features = recognition_net.forward_features(torch.zeros(1, 3, 150, 150))
    assert features.shape == (1, 256, 2, 2)  # 150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2


def test_recognition_net_parameters(faceapi_dir):
    tensors = read_tfjs(faceapi_dir / RECOGNITION_MANIFEST)
    assert len(tensors) == 117 and sum(t.numel() for t in tensors.values()) == 5_614_592
    assert sum(p.numel() for p in FaceRecognitionNet().parameters()) == 5_614_592


def test_registry_knows_the_recognition_weights(faceapi_dir, tmp_path, monkeypatch):
    """``faceapi-recognition``: the manifest and its .bin, pinned like ``faceapi-expression`` (same upstream commit,
    sha256 of the fixture files), found through $S2D_WEIGHTS_DIR."""
    from s2d_model import weights as W
    from s2d_model.faceapi import data_files
    from s2d_model.files import sha256_file

    spec, expression = W.KNOWN["faceapi-recognition"], W.KNOWN["faceapi-expression"]
    assert spec.url == expression.url.replace(expression.filename, RECOGNITION_MANIFEST)
    assert spec.sha256 == sha256_file(faceapi_dir / RECOGNITION_MANIFEST)
    [(name, url, sha256)] = spec.also
    assert name == RECOGNITION_BIN and url.endswith("/" + RECOGNITION_BIN) and url.startswith(W.FACEAPI)
    assert sha256 == sha256_file(faceapi_dir / RECOGNITION_BIN)
    monkeypatch.setenv("S2D_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(W.ENV_DIR, str(faceapi_dir))
    found = W.resolve("faceapi-recognition")
    assert found == faceapi_dir / RECOGNITION_MANIFEST and data_files(found) == [faceapi_dir / RECOGNITION_BIN]


def _recognition_truncated(m, b, groups):
    b.write_bytes(b.read_bytes()[:-100])
    return b


def _recognition_shape_changed(m, b, groups):  # same number of values: only the net's shape check can tell
    _weight(groups, "conv32_down/conv/filters")["shape"] = [7, 7, 32, 3]
    m.write_text(json.dumps(groups))
    return m


def _recognition_fc_removed(m, b, groups):  # fc is the last tensor: 256 x 128 uint8
    groups[0]["weights"].remove(_weight(groups, "fc"))
    m.write_text(json.dumps(groups))
    b.write_bytes(b.read_bytes()[:-256 * 128])
    return m


@pytest.mark.parametrize("damage, words", [
    (_recognition_truncated, "truncated"),
    (_recognition_shape_changed, "tensor conv32_down/conv/filters has shape [7, 7, 32, 3], expected [7, 7, 3, 32]"),
    (_recognition_fc_removed, "missing tensor fc "),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_damaged_recognition_weights_raise(faceapi_dir, tmp_path, damage, words):
    manifest, bin_, groups = _copy_weights(faceapi_dir, tmp_path, (RECOGNITION_MANIFEST, RECOGNITION_BIN))
    named = damage(manifest, bin_, groups)
    with pytest.raises(WeightsFileError) as err:
        load_recognition_net(manifest)
    message = str(err.value)
    assert "\n" not in message and str(named) in message and words in message, message


def test_each_loader_refuses_the_other_net(faceapi_dir):
    """A mismatched manifest (the other net's) fails on its first tensor, naming the file and the net it wants."""
    with pytest.raises(WeightsFileError, match="missing tensor dense0/conv0/filters .*faceExpressionNet") as err:
        load_expression_net(faceapi_dir / RECOGNITION_MANIFEST)
    assert "\n" not in str(err.value) and RECOGNITION_MANIFEST in str(err.value)
    with pytest.raises(WeightsFileError, match="missing tensor conv32_down/conv/filters .*faceRecognitionNet"):
        load_recognition_net(faceapi_dir / MANIFEST)


def test_the_recognition_weights_check_needs_no_torch_and_knows_the_nets_tensors(faceapi_dir, tmp_path):
    """``tfjs.check_recognition_weights`` (numpy only: the driver checks the file before any work) takes the
    published file, whose tensors are exactly ``recognition_shapes``, and refuses the expression net's."""
    from s2d_model.tfjs import check_recognition_weights, read_tfjs_arrays, recognition_shapes

    tensors = read_tfjs_arrays(faceapi_dir / RECOGNITION_MANIFEST)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == recognition_shapes()
    assert set(recognition_shapes()) == {tfjs_name(k, _RECOGNITION_TFJS_NAMES)[0]
                                         for k in FaceRecognitionNet().state_dict()}
    check_recognition_weights(faceapi_dir / RECOGNITION_MANIFEST)
    with pytest.raises(WeightsFileError, match="missing tensor conv32_down/conv/filters"):
        check_recognition_weights(faceapi_dir / MANIFEST)
    groups = json.loads((faceapi_dir / RECOGNITION_MANIFEST).read_text())
    groups[0]["weights"][-1]["shape"] = [128, 256]  # fc transposed: same size, wrong net
    (tmp_path / RECOGNITION_MANIFEST).write_text(json.dumps(groups))
    shutil.copy(faceapi_dir / RECOGNITION_BIN, tmp_path)
    with pytest.raises(WeightsFileError, match=r"tensor fc has shape \[128, 256\], expected \[256, 128\]"):
        check_recognition_weights(tmp_path / RECOGNITION_MANIFEST)
