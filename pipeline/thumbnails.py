"""Face thumbnails: an aligned face crop as the ``data:`` URI of a small JPEG, the form the timelines store
(``s2d.thumbnails``) and the report shows.

The face actor makes one per track as it aligns faces (its highest-score face); ``thumbnails`` makes them again
from the video and its landmark-cache rows, for a timeline written before they were stored.
"""
from __future__ import annotations

import base64
import io

import numpy as np

THUMB_PX = 96


def thumbnail_uri(crop: np.ndarray) -> str:
    """An aligned face crop (uint8 RGB) -> the data: URI of its THUMB_PX x THUMB_PX JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(crop).resize((THUMB_PX, THUMB_PX), Image.LANCZOS).save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnails(record: dict, faces) -> dict[int, str]:
    """track_id -> data: URI of the aligned crop of its highest-score face row (faces: the cache entry's table).
    A video is decoded once, for all its tracks' frames; an image is read upright (EXIF applied)."""
    from .align import align_face

    df = faces.select(["frame_index", "time_s", "track_id", "score", "kps5"]).to_pandas()
    if df.empty:
        return {}
    best = df.loc[df.groupby("track_id")["score"].idxmax()]
    if record.get("kind") == "image":
        from .images import read_image

        image = read_image(record["video_path"])
        frames = {int(i): image for i in best["frame_index"]}
    else:
        from .decode import get_decoder

        want = best.drop_duplicates("frame_index")
        got = get_decoder("pyav").read_frames(record["video_path"], want["frame_index"].to_numpy(),
                                              want["time_s"].to_numpy())
        frames = dict(zip(got["frame_index"].tolist(), got["frames"]))
    return {int(r.track_id): thumbnail_uri(align_face(frames[int(r.frame_index)], np.asarray(r.kps5)))
            for r in best.itertuples()}
