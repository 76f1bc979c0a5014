"""pipeline.precision: which precision S2D runs in on each kind of device, read from the CPU's flags; the actor
runs it (bf16 and int8 move the outputs a little, never much); a timeline made in one precision is not taken for
another's; int8 where it cannot run stops before any work."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.precision import check_device, cpu_flags, describe, resolve_precision

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_vnni avx512_bf16
processor\t: 1
flags\t\t: fpu
"""


def test_the_flags_are_read_from_cpuinfo():
    assert {"avx512_bf16", "avx512f", "sse2"} <= cpu_flags(CPUINFO) and "amx_bf16" not in cpu_flags(CPUINFO)
    assert cpu_flags("model name: x\n") == set()


@pytest.mark.parametrize("precision, config, native, cpu, cuda", [
    ("auto", "s2d_base_patch16_224", "avx512_bf16", "bf16", "bf16"),  # a CPU that runs bf16 natively
    ("auto", "s2d_base_patch16_224", "amx_bf16", "bf16", "bf16"),
    ("auto", "s2d_base_patch16_224", "", "fp32", "bf16"),  # no native bf16: fp32 on the CPU, the GPU as before
    ("auto", "s2d_tiny", "avx512_bf16", "fp32", "bf16"),  # small models stay fp32 on a CPU
    ("auto", "faceapi-expression", "avx512_bf16", "fp32", "fp32"),
    ("fp32", "s2d_base_patch16_224", "avx512_bf16", "fp32", "fp32"),
    ("bf16", "s2d_tiny", "", "bf16", "bf16"),  # asked for: runs (emulated), and says so
    ("int8", "s2d_base_patch16_224", "avx512_bf16", "int8", None),  # CPU only: no int8 path on a GPU
    ("int8", "s2d_tiny", "", "int8", None),
])
def test_auto_picks_bf16_where_it_runs_natively(precision, config, native, cpu, cuda):
    assert resolve_precision(precision, config, native) == {"cpu": cpu, "cuda": cuda}


def test_the_log_line_says_why():
    assert describe({"cpu": "bf16", "cuda": "bf16"}, "avx512_bf16") == "bf16 (avx512_bf16) on CPU, bf16 on GPU"
    assert "emulated, about 2x slower than fp32 (measured 0.50x" in describe({"cpu": "bf16", "cuda": "bf16"}, "")
    assert describe({"cpu": "fp32", "cuda": "bf16"}, "") == "fp32 on CPU, bf16 on GPU"
    assert describe({"cpu": "int8", "cuda": None}, "") == "int8 on CPU, none (CPU only) on GPU"


def test_int8_where_it_cannot_run_fails_in_one_line():
    int8 = resolve_precision("int8", "s2d_base_patch16_224")
    check_device(int8, "cpu")
    check_device(int8, "auto")  # not known yet: checked again once the run picked its device
    with pytest.raises(ValueError, match="--precision int8 runs on a CPU only: use --device cpu, or --precision auto"):
        check_device(int8, "cuda")
    check_device(resolve_precision("bf16", "s2d_tiny"), "cuda")
    with pytest.raises(ValueError, match="face-api's expression net runs in fp32 or bf16"):
        resolve_precision("int8", "faceapi-expression")


def test_an_unknown_precision_fails_in_one_line():
    from pipeline.settings import AnnotateSettings

    with pytest.raises(ValueError, match="unknown precision 'int4': choose one of auto, fp32, bf16, int8"):
        AnnotateSettings(precision="int4")


def test_bf16_and_int8_move_the_probabilities_a_little_and_change_the_settings_hash(landmark_weights, fixtures_dir):
    """The tiny model on a real face clip (the man of single_face.mp4, aligned as the chain cuts him) in fp32, bf16
    and int8: close (max difference < 0.02), not the same; int8 quantised the Linear layers but the landmark
    branch's; the timeline keys differ."""
    import av
    import torch

    from pipeline.align import align_face
    from pipeline.annotate_run import labelling
    from pipeline.classifier import resolve_classifier
    from pipeline.detector import FaceDetector
    from pipeline.s2d_actor import S2DWorker
    from pipeline.settings import DETECTORS, AnnotateSettings, FaceSettings

    detector = FaceDetector(fixtures_dir / "weights" / "mobilenet0.25_Final.pth", DETECTORS["retinaface-mobilenet"])
    with av.open(str(fixtures_dir / "videos" / "single_face.mp4")) as f:
        frames = [fr.to_ndarray(format="rgb24") for i, fr in enumerate(f.decode(video=0)) if i % 4 == 0][:16]
    clip = np.stack([align_face(fr, detector(fr[None])[0]["kps5"][0]) for fr in frames])[None]
    c = {p: resolve_classifier("random-tiny", None, str(landmark_weights), precision=p)
         for p in ("fp32", "bf16", "int8")}
    workers = {p: S2DWorker(c[p], threads=1) for p in c}
    probs = {p: w.probabilities(clip) for p, w in workers.items()}
    for p in ("bf16", "int8"):
        diff = np.abs(probs["fp32"] - probs[p]).max()
        assert 0 < diff < 0.02, (p, diff)
    kinds = {n: type(m).__module__ for n, m in workers["int8"].models["video"].named_modules()
             if "Linear" in type(m).__name__}
    assert kinds["landmark.output_layer.linear"] == "torch.nn.modules.linear"
    assert kinds["head.fc_cls"].startswith("torch.ao.nn.quantized") and \
        all(v.startswith("torch.ao.nn.quantized") for n, v in kinds.items() if n.startswith("blocks."))
    assert not any(isinstance(m, torch.nn.Linear) for n, m in workers["fp32"].models["video"].named_modules()
                   if type(m).__module__.startswith("torch.ao"))
    from types import SimpleNamespace

    plan = SimpleNamespace(key="faces", settings=FaceSettings())
    keys = {labelling(c[p], "random-tiny", plan, AnnotateSettings()).key for p in c}
    assert len(keys) == 3


def test_an_int8_run_says_so_everywhere_and_stays_close_to_fp32(annotated_run, tmp_path, detector_weights,
                                                                landmark_weights):
    """``annotate(..., precision="int8")`` on a video the shared run classified in fp32 (auto: the tiny model stays
    fp32 on a CPU), its faces from that run's cache: the manifest and the timeline's metadata say int8 (none on a
    GPU), the segments are the same and their probabilities close (< 0.02), not equal."""
    import json

    import pyarrow.parquet as pq

    from pipeline import annotate

    out, df = annotated_run
    video = next(v for v in df.attrs["manifest"]["videos"] if v["video_path"].endswith("single_face.mp4"))
    int8 = annotate(video["video_path"], out=tmp_path / "o", cache=out / "cache", weights="random-tiny",
                    precision="int8", progress=False, report=False, detector_weights=str(detector_weights),
                    landmark_weights=str(landmark_weights))
    manifest = int8.attrs["manifest"]
    assert manifest["input"]["precision"] == {"cpu": "int8", "cuda": None}
    assert manifest["videos"][0]["status"] == "ok" and manifest["settings_hash"] != df.attrs["manifest"]["settings_hash"]
    meta = pq.read_schema(tmp_path / "o" / manifest["videos"][0]["timeline"]).metadata  # (relative to out)
    assert json.loads(meta[b"s2d.precision"]) == {"cpu": "int8", "cuda": None}
    keys = ["track_id", "segment"]
    fp32 = df[df["video_id"] == video["video_id"]].sort_values(keys).reset_index(drop=True)
    int8 = int8.sort_values(keys).reset_index(drop=True)
    assert fp32[keys].equals(int8[keys]) and len(fp32) > 0
    probs = [c for c in int8.columns if c.startswith("p_")]  # (the shared run also holds images: other labels)
    diff = (fp32[probs] - int8[probs]).abs().to_numpy().max()
    assert 0 < diff < 0.02, diff
