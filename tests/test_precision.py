"""pipeline.precision: which precision S2D runs in on each kind of device, read from the CPU's flags; the actor
runs it (bf16 moves the outputs a little, never much); a timeline made in one precision is not taken for another's."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.precision import cpu_flags, describe, resolve_precision

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
])
def test_auto_picks_bf16_where_it_runs_natively(precision, config, native, cpu, cuda):
    assert resolve_precision(precision, config, native) == {"cpu": cpu, "cuda": cuda}


def test_the_log_line_says_why():
    assert describe({"cpu": "bf16", "cuda": "bf16"}, "avx512_bf16") == "bf16 (avx512_bf16) on CPU, bf16 on GPU"
    assert "emulated, slower than fp32" in describe({"cpu": "bf16", "cuda": "bf16"}, "")
    assert describe({"cpu": "fp32", "cuda": "bf16"}, "") == "fp32 on CPU, bf16 on GPU"


def test_an_unknown_precision_fails_in_one_line():
    from pipeline.settings import AnnotateSettings

    with pytest.raises(ValueError, match="unknown precision 'int4': choose one of auto, fp32, bf16"):
        AnnotateSettings(precision="int4")


def test_bf16_moves_the_probabilities_a_little_and_changes_the_settings_hash(landmark_weights, fixtures_dir):
    """The tiny model on a real face clip (the man of single_face.mp4, aligned as the chain cuts him) in fp32 and
    in bf16: close (max difference < 0.02), not the same; the timeline keys differ."""
    import av

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
    c = {p: resolve_classifier("random-tiny", None, str(landmark_weights), precision=p) for p in ("fp32", "bf16")}
    probs = {p: S2DWorker(c[p], threads=1).probabilities(clip) for p in c}
    diff = np.abs(probs["fp32"] - probs["bf16"]).max()
    assert 0 < diff < 0.02, diff
    from types import SimpleNamespace

    plan = SimpleNamespace(key="faces", settings=FaceSettings())
    assert labelling(c["fp32"], "random-tiny", plan, AnnotateSettings()).key != \
        labelling(c["bf16"], "random-tiny", plan, AnnotateSettings()).key
