"""The comparison with the golden outputs, shared by test_golden (a local run) and test_cluster (runs on a
cluster of several nodes, one of which dies)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.timeline import in_run

from .make_golden import HERE

EXACT = ["track_id", "person_id", "segment", "start_s", "end_s", "n_face_frames", "label", "model"]


def assert_timelines_equal_golden(videos: list[dict], name: str = "default", out=None) -> None:
    """``videos``: a run's per-video records (``video_path``, ``timeline``), the golden inputs in any order;
    ``out``: the run folder their timelines are relative to (a manifest's records)."""
    for v in videos:
        file = v["video_path"].rsplit("/", 1)[-1]
        path = v["timeline"] if out is None else in_run(out, v["timeline"])
        new = storage.read_table(path).drop(["video_id", "video_path"])  # a local path or a URI
        old = pq.read_table(HERE / f"{name}.{file}.timeline.parquet")
        assert new.schema.remove_metadata().equals(old.schema.remove_metadata())
        assert new.schema.metadata[b"s2d.status"] == old.schema.metadata[b"s2d.status"]
        new, old = new.to_pandas(), old.to_pandas()
        assert new[EXACT].equals(old[EXACT]), file
        p = [c for c in new.columns if c.startswith("p_")] + ["confidence"]
        np.testing.assert_allclose(new[p].to_numpy(), old[p].to_numpy(), atol=1e-5, err_msg=file)
        np.testing.assert_allclose(np.stack(new.bbox) if len(new) else 0, np.stack(old.bbox) if len(old) else 0,
                                   atol=1e-3, err_msg=file)
