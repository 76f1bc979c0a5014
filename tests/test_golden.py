"""The chain against the golden outputs of the chain it replaced (tests/golden, made by make_golden.py): the same
landmark-cache rows and track ids, the same segments and labels, probabilities within 1e-5."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from golden.check import assert_timelines_equal_golden
from golden.make_golden import HERE, RUNS, inputs
from pipeline.annotate_run import run_annotate
from pipeline.settings import AnnotateSettings, FaceSettings


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, ray_local, tmp_path_factory, detector_weights, landmark_weights):
    faces = FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights))
    settings = AnnotateSettings(weights="random-tiny", s2d_landmark_weights=str(landmark_weights),
                                **RUNS[request.param])
    tmp = tmp_path_factory.mktemp(request.param)
    result = run_annotate(inputs(tmp / "videos"), tmp / "out", tmp / "cache", faces, settings, device="cpu",
                          progress=False)
    return request.param, result


def test_timelines_equal_the_golden_copy(run):
    name, result = run
    assert [v["status"] for v in result.videos] == ["ok", "ok", "no_faces", "ok"]  # face_noface, group, no_face, single
    assert_timelines_equal_golden(result.videos, name)


def test_cache_rows_equal_the_golden_copy(run):
    name, result = run
    if name != "default":
        pytest.skip("the cache rows do not depend on the timeline settings")
    for meta in result.faces.videos:
        file = meta["source_path"].rsplit("/", 1)[-1]
        new = pd.read_parquet(next((result.faces.cache_dir / "faces").glob(f"*/{meta['video_id']}.faces.parquet")))
        old = pd.read_parquet(HERE / f"{file}.faces.parquet")
        assert list(new.columns) == ["video_id"] + list(old.columns) and len(new) == len(old), file
        for c in ("frame_index", "time_s", "face", "track_id", "person_id", "width", "height"):
            assert (new[c].to_numpy() == old[c].to_numpy()).all(), (file, c)
        for c in ("score", "bbox", "kps5", "landmarks68"):
            a, b = (np.stack(x[c].to_numpy()) if len(x) else np.zeros(0) for x in (new, old))
            np.testing.assert_allclose(a, b, atol=1e-3, err_msg=f"{file} {c}")
