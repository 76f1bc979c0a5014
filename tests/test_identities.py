"""Persons through the real chain: multi-person edits made from the fixtures' real faces (tests/edits.py), the real
detector, tracker and face-api's recognition net. The same person after a cut and after an absence of 3 s or more
is one person; different people never share one; two people side by side are two; a sharded run finds the persons
of one pass; another threshold re-groups from the cache without a decode; identities can be turned off."""
from __future__ import annotations

import numpy as np
import pytest

from edits import SHORT_EDIT, edit_seconds, label_tracks, make_edit
from pipeline import cache
from pipeline.annotate_run import run_annotate
from pipeline.faces_run import run_faces
from pipeline.settings import AnnotateSettings, FaceSettings
from pipeline.timeline import read_timelines


@pytest.fixture(scope="module")
def edit(tmp_path_factory, fixtures_dir):
    """SHORT_EDIT (jin, f1, f13 beside group1, jin again after 7 s away, across 3 cuts) and its ground truth."""
    path = tmp_path_factory.mktemp("edit") / "edit.mp4"
    return path, make_edit(path, fixtures_dir, SHORT_EDIT)


@pytest.fixture(scope="module")
def one_pass(ray_local, edit, face_settings, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    result = run_faces([str(edit[0])], cache_dir, face_settings, progress=False)
    return cache_dir, result


def rows(cache_dir, result):
    return cache.read_faces(cache_dir, result.settings_hash).sort_values(["frame_index", "face"], ignore_index=True)


def persons_by_truth(df, truth) -> dict[str, set[int]]:
    """{true person: the person ids its tracks were given}."""
    labels = label_tracks(df, truth)
    found: dict[str, set[int]] = {}
    for track, person in df.groupby("track_id")["person_id"].first().items():
        found.setdefault(labels[track], set()).add(int(person))
    return found


def test_one_person_per_person_across_cuts_absence_and_side_by_side(one_pass, edit):
    cache_dir, result = one_pass
    df = rows(cache_dir, result)
    found = persons_by_truth(df, edit[1])
    assert set(found) == {"jin", "f1", "f13", "group1"}, found  # every track is someone's
    assert all(len(ids) == 1 for ids in found.values()), found  # jin after a cut and 7 s away: one id
    assert len(set().union(*found.values())) == 4, found  # four people, four ids: never shared
    jin = df[df["person_id"] == next(iter(found["jin"]))]
    assert jin["track_id"].nunique() >= 2  # (a person of several tracks: the cut and the absence split them)
    starts = [s for s, _ in edit_seconds(SHORT_EDIT, 10)]
    assert jin["time_s"].min() < starts[1] and jin["time_s"].max() >= starts[3]
    meta = result.videos[0]
    assert meta["n_persons"] == 4 and meta["identity_threshold"] == settings_threshold()
    tracks = cache.read_tracks(cache_dir, result.settings_hash, meta["video_id"]).to_pandas()
    assert (tracks["n_chips"] > 0).all() and all(len(d) == 128 for d in tracks["descriptor"])
    assert tracks.set_index("track_id")["person_id"].to_dict() == df.groupby("track_id")["person_id"].first().to_dict()


def settings_threshold() -> float:
    return FaceSettings().identity_threshold


def test_no_track_runs_across_a_cut(one_pass, edit):
    cache_dir, result = one_pass
    df = rows(cache_dir, result)
    shots = edit_seconds(SHORT_EDIT, 10)
    for track, t in df.groupby("track_id")["time_s"]:
        inside = [i for i, (a, b) in enumerate(shots) if a - 1e-6 <= t.min() < b]
        assert t.max() < shots[inside[0]][1], f"track {track} runs from shot {inside[0]} into the next"


def test_a_sharded_run_finds_the_persons_of_one_pass(one_pass, edit, face_settings, tmp_path):
    cache_dir, result = one_pass
    from dataclasses import replace

    sharded = run_faces([str(edit[0])], tmp_path, replace(face_settings, shard_s=4.0), progress=False)
    assert sharded.decoded == 1 and sharded.videos[0]["status"] == "ok"
    a, b = rows(cache_dir, result), rows(tmp_path, sharded)
    assert len(a) == len(b) and (a["frame_index"].to_numpy() == b["frame_index"].to_numpy()).all()
    assert (a["person_id"].to_numpy() == b["person_id"].to_numpy()).all()
    assert sharded.videos[0]["n_persons"] == 4


def test_another_threshold_regroups_from_the_cache_without_a_decode(one_pass, edit, face_settings, tmp_path,
                                                                    capsys):
    from dataclasses import replace
    from shutil import copytree

    cache_dir, first = one_pass
    copy = copytree(cache_dir, tmp_path / "cache")  # (the module's cache stays as it was)
    strict = run_faces([str(edit[0])], copy, replace(face_settings, identity_threshold=0.01), progress=False)
    assert strict.decoded == 0 and strict.cached == 1 and strict.settings_hash == first.settings_hash
    assert "re-grouped into persons" in capsys.readouterr().err
    df = rows(copy, strict)
    assert df.groupby("track_id")["person_id"].first().nunique() == df["track_id"].nunique()  # each its own
    meta = cache.read_meta(copy, strict.settings_hash, strict.videos[0]["video_id"])
    assert meta["identity_threshold"] == 0.01 and meta["n_persons"] == df["track_id"].nunique()
    again = run_faces([str(edit[0])], copy, face_settings, progress=False)
    assert again.decoded == 0 and (rows(copy, again)["person_id"].to_numpy() ==
                                   rows(cache_dir, first)["person_id"].to_numpy()).all()


def test_identities_off_makes_each_track_a_person_numbered_by_first_appearance(one_pass, edit, face_settings,
                                                                              tmp_path):
    from dataclasses import replace

    cache_dir, first = one_pass
    off = run_faces([str(edit[0])], tmp_path, replace(face_settings, identities=False), progress=False)
    assert off.settings_hash != first.settings_hash and off.decoded == 1
    df = rows(tmp_path, off)
    on = rows(cache_dir, first)
    assert (df["track_id"].to_numpy() == on["track_id"].to_numpy()).all()  # the same tracks
    firsts = df.groupby("track_id")["time_s"].min().sort_values(kind="stable")
    assert df.groupby("track_id")["person_id"].first()[firsts.index].tolist() == list(range(len(firsts)))
    meta = off.videos[0]
    assert meta["n_persons"] == meta["n_tracks"] and meta["identity_threshold"] is None
    tracks = cache.read_tracks(tmp_path, off.settings_hash, meta["video_id"]).to_pandas()
    assert (tracks["n_chips"] == 0).all() and tracks["descriptor"].isna().all()


def test_annotate_writes_person_ids_and_regroups_a_finished_run_without_a_decode(
        ray_local, edit, face_settings, landmark_weights, tmp_path):
    from dataclasses import replace

    from pipeline.timeline import read_manifest

    s2d = AnnotateSettings(weights="random-tiny", s2d_landmark_weights=str(landmark_weights))
    out = tmp_path / "out"
    first = run_annotate([str(edit[0])], out, None, face_settings, s2d, device="cpu", progress=False, report=False)
    assert [r.status for r in first.records] == ["ok"] and first.records[0].n_persons == 4
    df = read_timelines(out)
    faces = cache.read_faces(out / "cache").groupby("track_id")["person_id"].first()
    assert df["person_id"].dtype == np.int32 and (df["person_id"] == faces[df["track_id"]].to_numpy()).all()
    found = persons_by_truth(cache.read_faces(out / "cache"), edit[1])
    jin = next(iter(found["jin"]))
    assert df.loc[df["person_id"] == jin, "track_id"].nunique() >= 2  # one person's timeline over several tracks
    manifest = read_manifest(out)
    assert manifest["identities"]["on"] and manifest["identities"]["threshold"] == face_settings.identity_threshold
    assert manifest["videos"][0]["n_persons"] == 4

    apart = run_annotate([str(edit[0])], out, None, replace(face_settings, identity_threshold=0.01), s2d,
                         device="cpu", progress=False, report=False)
    assert apart.clips == 0 and (apart.faces is None or apart.faces.decoded == 0)  # no decode, no S2D
    again = read_timelines(out)
    assert again["person_id"].nunique() == again["track_id"].nunique() == apart.records[0].n_persons
    cols = [c for c in df.columns if c != "person_id"]
    assert again[cols].drop(columns="bbox").equals(df[cols].drop(columns="bbox"))  # nothing else changed
    back = run_annotate([str(edit[0])], out, None, face_settings, s2d, device="cpu", progress=False, report=False)
    assert back.clips == 0 and read_timelines(out)["person_id"].equals(df["person_id"])

