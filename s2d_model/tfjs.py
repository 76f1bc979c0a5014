"""face-api.js's tfjs weight files read with numpy alone (no torch): the driver checks an identity weights file
before any work with ``check_recognition_weights`` and the nets load from ``read_tfjs_arrays``
(``s2d_model.faceapi``).

A tfjs weights manifest is a JSON list of groups ``{"paths": [...], "weights": [...]}``; a group's binary files
(relative to the manifest's folder) are concatenated and hold its tensors back to back. A uint8-quantised tensor's
value is ``q * scale + min``; any other is little-endian float32.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class WeightsFileError(ValueError):
    """A weights file that cannot be read or does not fit the net; the message is one line naming the file."""


_BYTES_PER_VALUE = {"float32": 4, "uint8": 1}  # stored dtype -> bytes; uint8 only as quantisation


def error(path: Path | str, what: str) -> WeightsFileError:
    return WeightsFileError(f"{path}: {' '.join(str(what).split())}")


def _tensor_spec(manifest: Path, spec) -> tuple[str, tuple[int, ...], str, dict | None]:
    """One manifest entry -> (name, shape, stored dtype, quantisation or None), checked."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise error(manifest, f"not a tfjs weights manifest (weight entry {spec!r:.80})")
    name, shape, dtype, quant = spec["name"], spec.get("shape"), spec.get("dtype"), spec.get("quantization")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise error(manifest, f"tensor {name} has an invalid shape {shape!r}")
    if dtype != "float32":
        raise error(manifest, f"tensor {name} has unsupported dtype {dtype!r} (only float32)")
    if quant is None:
        return name, tuple(shape), "float32", None
    if not isinstance(quant, dict) or quant.get("dtype") != "uint8":
        qdtype = quant.get("dtype") if isinstance(quant, dict) else quant
        raise error(manifest, f"tensor {name} has unsupported quantization {qdtype!r} (only uint8)")
    if not all(isinstance(quant.get(k), (int, float)) for k in ("scale", "min")):
        raise error(manifest, f"tensor {name} has a uint8 quantization without numeric scale/min")
    return name, tuple(shape), "uint8", quant


def data_files(manifest: str | Path) -> list[Path]:
    """The binary files a tfjs weights manifest names (beside it), in order; [] when it cannot be read."""
    manifest = Path(manifest)
    try:
        groups = json.loads(manifest.read_text())
        return [manifest.parent / p for g in groups for p in g["paths"]]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def read_tfjs_arrays(manifest: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a tfjs weights manifest, dequantised to float32 numpy arrays in TF layout (shapes as the
    manifest says). Raises ``WeightsFileError`` (one line naming the file) on anything but the format above."""
    manifest = Path(manifest)
    try:
        groups = json.loads(manifest.read_text())
    except OSError as e:
        raise error(manifest, f"cannot read manifest ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(manifest, f"not JSON ({e})") from None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("paths"), list) and isinstance(g.get("weights"), list)
        for g in groups
    ):
        raise error(manifest, "not a tfjs weights manifest (expected a list of {paths, weights} groups)")

    tensors: dict[str, np.ndarray] = {}
    for group in groups:
        specs = [_tensor_spec(manifest, s) for s in group["weights"]]
        bins = [manifest.parent / p for p in group["paths"] if isinstance(p, str)]
        if len(bins) != len(group["paths"]):
            raise error(manifest, "not a tfjs weights manifest (a path is not a string)")
        chunks = []
        for path in bins:
            try:
                chunks.append(path.read_bytes())
            except OSError as e:
                raise error(path, f"cannot read weights file named by {manifest.name} ({e.strerror or e})") from None
        data = b"".join(chunks)
        needed = sum(int(np.prod(shape)) * _BYTES_PER_VALUE[stored] for _, shape, stored, _ in specs)
        if len(data) != needed:
            what = "truncated" if len(data) < needed else "too long"
            files = ", ".join(str(p) for p in bins) or "(no weights files)"
            raise error(files, f"{what}: {len(data)} bytes, its manifest {manifest} needs {needed}")
        offset = 0
        for name, shape, stored, quant in specs:
            count = int(np.prod(shape))
            if name in tensors:
                raise error(manifest, f"tensor {name} appears twice")
            if stored == "uint8":
                q = np.frombuffer(data, np.uint8, count, offset)
                values = (q * float(quant["scale"]) + float(quant["min"])).astype(np.float32)  # as tfjs: f64 math
            else:
                values = np.frombuffer(data, "<f4", count, offset).astype(np.float32)
            tensors[name] = values.reshape(shape)
            offset += count * _BYTES_PER_VALUE[stored]
    return tensors


def recognition_shapes() -> dict[str, tuple[int, ...]]:
    """The tensors of face-api's faceRecognitionNet (``faceapi.FaceRecognitionNet``), name -> TF shape."""
    def conv(name: str, cin: int, cout: int, k: int = 3) -> dict:
        return {f"{name}/conv/filters": (k, k, cin, cout), f"{name}/conv/bias": (cout,),
                f"{name}/scale/weights": (cout,), f"{name}/scale/biases": (cout,)}

    def block(name: str, cin: int, cout: int) -> dict:
        return {**conv(f"{name}/conv1", cin, cout), **conv(f"{name}/conv2", cout, cout)}

    shapes = conv("conv32_down", 3, 32, 7)
    for name, cin, cout, residual in (("conv32", 32, 32, 3), ("conv64", 32, 64, 3), ("conv128", 64, 128, 2),
                                      ("conv256", 128, 256, 2)):
        if cin != cout:
            shapes.update(block(f"{name}_down", cin, cout))
        for i in range(1, residual + 1):
            shapes.update(block(f"{name}_{i}", cout, cout))
    shapes.update(block("conv256_down_out", 256, 256))
    shapes["fc"] = (256, 128)
    return shapes


def check_recognition_weights(manifest: str | Path) -> None:
    """Read a face-recognition weights manifest and its data (numpy only) and check its tensors are exactly
    faceRecognitionNet's, by name and shape: ``WeightsFileError`` in one line naming the file, before any work."""
    tensors = read_tfjs_arrays(manifest)
    for name, shape in recognition_shapes().items():
        if name not in tensors:
            raise error(manifest, f"missing tensor {name} (is this faceRecognitionNet's manifest?)")
        if tuple(tensors[name].shape) != shape:
            raise error(manifest, f"tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")
    extra = sorted(set(tensors) - set(recognition_shapes()))
    if extra:
        raise error(manifest, f"unknown tensors {extra[:3]} (not part of faceRecognitionNet)")
