"""The chain against the golden outputs of the chain it replaced (tests/golden, made by make_golden.py): the same
landmark-cache rows and track ids, the same segments and labels, probabilities within 1e-5."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from golden.make_golden import HERE, RUNS, inputs
from pipeline.annotate import run_annotate
from pipeline.settings import AnnotateSettings, FaceSettings

EXACT = ["track_id", "segment", "start_s", "end_s", "n_face_frames", "label", "model"]


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
    for v in result.videos:
        file = v["video_path"].rsplit("/", 1)[-1]
        new = pq.read_table(v["timeline"]).drop(["video_id", "video_path"])
        old = pq.read_table(HERE / f"{name}.{file}.timeline.parquet")
        assert new.schema.remove_metadata().equals(old.schema.remove_metadata())
        assert new.schema.metadata[b"s2d.status"] == old.schema.metadata[b"s2d.status"]
        new, old = new.to_pandas(), old.to_pandas()
        assert new[EXACT].equals(old[EXACT]), file
        p = [c for c in new.columns if c.startswith("p_")] + ["confidence"]
        np.testing.assert_allclose(new[p].to_numpy(), old[p].to_numpy(), atol=1e-5, err_msg=file)
        np.testing.assert_allclose(np.stack(new.bbox) if len(new) else 0, np.stack(old.bbox) if len(old) else 0,
                                   atol=1e-3, err_msg=file)


def test_cache_rows_equal_the_golden_copy(run):
    name, result = run
    if name != "default":
        pytest.skip("the cache rows do not depend on the timeline settings")
    for meta in result.faces.videos:
        file = meta["source_path"].rsplit("/", 1)[-1]
        new = pd.read_parquet(next((result.faces.cache_dir / "faces").glob(f"*/{meta['video_id']}.faces.parquet")))
        old = pd.read_parquet(HERE / f"{file}.faces.parquet")
        assert list(new.columns) == ["video_id"] + list(old.columns) and len(new) == len(old), file
        for c in ("frame_index", "time_s", "face", "track_id", "width", "height"):
            assert (new[c].to_numpy() == old[c].to_numpy()).all(), (file, c)
        for c in ("score", "bbox", "kps5", "landmarks68"):
            a, b = (np.stack(x[c].to_numpy()) if len(x) else np.zeros(0) for x in (new, old))
            np.testing.assert_allclose(a, b, atol=1e-3, err_msg=f"{file} {c}")
