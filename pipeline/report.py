"""`s2d report OUT`: one self-contained HTML page for an ``s2d annotate --out`` folder, ``OUT/report.html``.

Everything comes from the run folder: ``manifest.json`` (settings, weights, warning, per-video records), each
video's timeline Parquet (its rows, persons and face thumbnails), its landmark cache entry (which of a person's
tracks shows its face; the thumbnails of a timeline written before they were stored) and, once ``s2d people`` has
written it, ``people.parquet``. The page has no scripts and loads nothing: the thumbnails are ``data:`` JPEGs, the
timelines inline SVG, and a Content-Security-Policy that allows only those, so it opens from disk in any browser
and a stray reference shows up as a console error.

Sections, what a reader came for first: an overview (per video, who is in it and their emotions over time: each
person's dominant emotion and its runs of one label; per image, each face's label), the people across the run
(with ``people.parquet``: each global person's face and the files and person ids it is in), then per video
(status, duration; per person, its tracks together: the aligned face crop of its track with the most descriptor
chips, the emotion probabilities stacked over the whole video, gaps between its tracks left empty, the dominant
emotion and the share of time per emotion) and per image (each face with its label), the files without a timeline
and why, and last the run (warning in red at the top of the page, counts by status, wall time, weights, the
model's input crop, settings, versions). A file that is gone or a cache entry that is missing costs its thumbnail
(a placeholder and a note), never the report.
"""
from __future__ import annotations

from collections import Counter
from html import escape

import numpy as np
import pandas as pd

from . import cache, storage
from .people_link import best_track, read_people
from .summary import person_panels, persons, summarize
from .thumbnails import thumbnails
from .sources import display
from .timeline import (in_run, prob_columns, read_manifest, run_cache, timeline_meta, timeline_path,
                       timeline_thumbnails)

SVG_W, SVG_H, PAD_L, PAD_R, PAD_T, PAD_B = 720, 110, 34, 8, 6, 20  # timeline plot, px
COLOURS = {"happy": "#f2c14e", "happiness": "#f2c14e", "sad": "#3b6fb6", "sadness": "#3b6fb6",
           "neutral": "#9e9e9e", "angry": "#d62728", "anger": "#d62728", "surprise": "#ff7f0e",
           "disgust": "#2ca02c", "fear": "#9467bd", "contempt": "#8c564b", "anxiety": "#e377c2",
           "helplessness": "#17becf", "disappointment": "#bcbd22"}
OTHER = ["#1f77b4", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d"]
STATUS_ORDER = ("ok", "no_faces", "error", "interrupted")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f4f4f4}.warning{color:#c00000;font-weight:bold;border:2px solid #c00000;padding:.5em}.note{color:#a05000}
.track{display:flex;gap:12px;align-items:flex-start;margin:.8em 0}.thumb{width:96px;height:96px;flex:none}
.ph{background:#ddd;color:#555;font-size:11px;display:flex;align-items:center;justify-content:center}
.legend span{display:inline-block;margin-right:10px}.legend i{display:inline-block;width:11px;height:11px;
margin-right:3px;vertical-align:-1px}.small{font-size:12px;color:#555}.faces{display:flex;flex-wrap:wrap;gap:12px}"""


def colour(name: str, i: int) -> str:
    """A class's fixed colour: by its name (the same emotion has one colour in every label set), else by index."""
    return COLOURS.get(name.strip().lower(), OTHER[i % len(OTHER)])


def _table(rows, head=None) -> str:
    h = "<tr>" + "".join(f"<th>{escape(str(c))}</th>" for c in head) + "</tr>" if head else ""
    return "<table>" + h + "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                                   for r in rows) + "</table>"


def _pairs(items, per_row: int = 2) -> str:
    """(key, value) pairs as a compact table, ``per_row`` pairs side by side."""
    rows = [sum(([k, v] for k, v in items[i:i + per_row]), []) for i in range(0, len(items), per_row)]
    return _table(rows)


def _value(v) -> str:
    """A setting or fingerprint as a reader reads it: dicts as ``key value; ...``, lists comma-separated."""
    if isinstance(v, dict):
        return "; ".join(f"{k} {_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return "none" if v is None else str(v)


def label_runs(g: pd.DataFrame) -> str:
    """A person's segments -> its runs of one label over time, as drawn (``columns``): "Neutral 0.0-0.9 s, Happy
    0.9-2.4 s"."""
    g = g.sort_values(["start_s", "end_s"])
    runs: list[list] = []
    for t0, t1, i in columns(g):
        label = str(g["label"].iloc[i])
        if runs and runs[-1][0] == label and abs(runs[-1][2] - t0) < 1e-6:
            runs[-1][2] = t1
        else:
            runs.append([label, t0, t1])
    return ", ".join(f"{label} {t0:.1f}-{t1:.1f} s" for label, t0, t1 in runs)


def overview(records: list[dict], loaded: dict) -> str:
    """Per file with faces: its persons (or faces), each with its dominant emotion and its emotions over time.
    ``loaded``: video_id -> ``_load_timeline``'s."""
    rows = []
    for r in records:
        image = r.get("kind") == "image"
        df, labels, _ = loaded.get(r["video_id"], (None, [], None))
        if df is None or not len(df):
            continue
        name = storage.name(r["video_path"])
        if image:
            rows += [(name, f"face {t.track_id}", str(t.label), f"{t.confidence:.2f}")
                     for t in df.sort_values("track_id").itertuples()]
            continue
        summary = summarize(df, labels).set_index("person_id")
        for pid, g in persons(df).groupby("person_id", sort=True):
            rows.append((name, f"person {pid}", summary.loc[pid, "dominant"], label_runs(g)))
    if not rows:
        return "<p>no faces in any file</p>"
    return _table(rows, ("file", "who", "dominant emotion", "emotions over time (images: confidence)"))


def columns(g: pd.DataFrame) -> list[tuple[float, float, int]]:
    """A track's or person's segments (rows sorted by start) -> the [t0, t1) each is drawn over, with its row
    position. The windows overlap (2 s windows, 1 s stride): each moment is drawn with the segment whose centre is
    nearest, so a boundary sits half-way between two centres (kept inside their overlap); a run of overlapping
    segments spans from its first start to its last end, and a hole (a start after the previous end: in a track, or
    between a person's tracks) stays empty."""
    start, end = g["start_s"].to_numpy(np.float64), g["end_s"].to_numpy(np.float64)
    out = []
    for i in range(len(g)):
        t0 = start[i] if i == 0 or start[i] > end[i - 1] else out[-1][1]
        if i + 1 < len(g) and start[i + 1] <= end[i]:
            mid = (start[i] + end[i] + start[i + 1] + end[i + 1]) / 4  # half-way between the two centres
            t1 = min(max(mid, start[i + 1], t0), end[i])
        else:
            t1 = end[i]
        out.append((float(t0), float(t1), i))
    return out


def _ticks(duration: float) -> list[float]:
    step = next(s for s in (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 1e9)
                if duration / s <= 8)
    return [k * step for k in range(int(duration / step + 1e-9) + 1)]


def timeline_svg(g: pd.DataFrame, labels, duration_s: float) -> str:
    """Inline SVG of one person (or track): class probabilities stacked (label-set order from the bottom) over
    ``columns``, x from 0 to the video's duration (the whole video, not where the face starts), ticks in seconds."""
    g = g.sort_values(["start_s", "end_s"])
    duration = max(float(duration_s or 0), float(g["end_s"].max()) if len(g) else 0.0, 1e-3)
    pw, ph = SVG_W - PAD_L - PAD_R, SVG_H - PAD_T - PAD_B
    x = lambda t: PAD_L + pw * t / duration  # noqa: E731
    probs = g[prob_columns(labels)].to_numpy(np.float64)  # [n,C]
    parts = [f'<svg width="{SVG_W}" height="{SVG_H}" '
             f'data-duration="{duration:g}" role="img"><rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" '
             'fill="#f6f6f6" stroke="#bbb"/>']
    for t0, t1, i in columns(g):
        bottom = PAD_T + ph
        parts.append(f'<g class="seg" data-t0="{t0:.3f}" data-t1="{t1:.3f}">')
        for j, c in enumerate(labels):
            h = ph * probs[i, j]
            parts.append(f'<rect x="{x(t0):.2f}" y="{bottom - h:.2f}" width="{max(x(t1) - x(t0), 0):.2f}" '
                         f'height="{h:.2f}" fill="{colour(c, j)}"/>')
            bottom -= h
        row = g.iloc[i]
        parts.append(f'<title>{row.start_s:.1f}-{row.end_s:.1f} s: {escape(str(row.label))} '
                     f'{row.confidence:.2f}</title></g>')
    for t in _ticks(duration):
        parts.append(f'<line x1="{x(t):.2f}" x2="{x(t):.2f}" y1="{PAD_T + ph}" y2="{PAD_T + ph + 4}" stroke="#555"/>'
                     f'<text x="{x(t):.2f}" y="{SVG_H - 4}" font-size="10" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" font-size="10" text-anchor="end">1</text>'
                 f'<text x="{PAD_L - 4}" y="{PAD_T + ph}" font-size="10" text-anchor="end">0</text>'
                 f'<text x="{PAD_L - 8}" y="{SVG_H - 4}" font-size="10" text-anchor="end">s</text></svg>')
    return "".join(parts)


def legend(labels) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{colour(c, j)}"></i>{escape(c)}</span>'
                                            for j, c in enumerate(labels)) + "</div>"


def _thumb(uri: str | None, note: str) -> str:
    if uri:
        return f'<img class="thumb" src="{uri}" alt="face">'
    return f'<div class="thumb ph" title="{escape(note)}">no thumbnail</div>'


def _load_timeline(out_dir, record: dict, default_labels):
    """(rows, label set, its stored thumbnails or None) of a record's timeline: its path, else where the run
    folder has it (a moved folder)."""
    for path in (in_run(out_dir, record.get("timeline")), timeline_path(out_dir, record["video_id"],
                                                                        record["video_path"])):
        if path and storage.is_file(path):
            table = storage.read_table(path)
            meta = timeline_meta(table) or {}
            return table.to_pandas(), list(meta.get("labels") or default_labels), timeline_thumbnails(table)
    return None, list(default_labels), None


def _labels(m: dict, record: dict) -> list:
    """The label set a record's timeline was written in, by the manifest."""
    image = record.get("kind") == "image"
    return list(m.get("image_labels") if image and m.get("image_labels") else m.get("labels") or [])


def _faces_and_duration(m: dict, cache_dir, record: dict, stored: dict | None) -> tuple[dict, float | None, list]:
    """(thumbnails, duration, notes) of a file with timeline rows: the timeline's stored thumbnails and the
    manifest's duration, and from the cache entry what they lack (an older run's thumbnails are made again)."""
    from .cache import read_entry

    thumbs, duration, notes = stored or {}, record.get("duration_s"), []
    try:
        entry = None if stored is not None and duration else \
            read_entry(cache_dir, m.get("face_settings_hash", ""), record["video_id"])
        if entry is not None:
            duration = duration or entry[1].get("duration_s")
        if stored is None and entry is None:
            notes.append(f"no landmark cache entry in {cache_dir}: no thumbnails")
        elif stored is None:
            thumbs = thumbnails(record, entry[0])
    except Exception as e:  # a file gone, a decode error: the page goes on without the faces
        if stored is None:
            notes.append(f"no thumbnails: {type(e).__name__}: {e}")
    return thumbs, duration, notes


def _image_faces(df: pd.DataFrame, labels, thumbs: dict) -> str:
    """An image's faces: each its crop, label, confidence and top three classes."""
    parts = ['<div class="faces">']
    for r in df.sort_values("track_id").itertuples():
        top = sorted(zip(labels, (getattr(r, c) for c in prob_columns(labels))), key=lambda p: -p[1])[:3]
        parts.append(f'<figure>{_thumb(thumbs.get(int(r.track_id)), "no crop")}<figcaption>face {r.track_id}: '
                     f'<b>{escape(str(r.label))}</b> {r.confidence:.2f}<br><span class="small">'
                     + escape(", ".join(f"{c} {p:.2f}" for c, p in top)) + "</span></figcaption></figure>")
    return "".join(parts) + "</div>"


def _tracks(m: dict, cache_dir, record: dict, df: pd.DataFrame) -> tuple[dict, dict]:
    """({track: first time}, {track: descriptor chips}) of a video's timeline rows: the cache entry's tracks table
    where it can be read, else the first segment starts and no chips."""
    first = df.groupby("track_id")["start_s"].min().to_dict()
    try:
        table = cache.read_tracks(cache_dir, m.get("face_settings_hash", ""), record["video_id"]).to_pylist()
    except Exception:  # no entry, an older one: the earliest track shows the person
        return first, {}
    known = {r["track_id"]: r for r in table if r["track_id"] in first}
    return {**first, **{t: r["first_s"] for t, r in known.items()}}, {t: r["n_chips"] for t, r in known.items()}


def _video_persons(record: dict, df: pd.DataFrame, labels, thumbs: dict, tracks: tuple, duration,
                   notes: list) -> str:
    """A video's persons: each the crop of its best track (``best_track``), its dominant emotion, its tracks'
    timeline over the whole video on one row and shares of time."""
    parts, (first, chips) = [], tracks
    summary = summarize(df, labels).set_index("person_id")
    for _, pid, g, (_, end) in person_panels(df, {record["video_id"]: duration}):
        s = summary.loc[pid]
        best = best_track({t: first[t] for t in g["track_id"].unique()}, chips)
        shares = _table([["share of time"] + [f"{100 * s['share_' + p[2:]]:.0f}%" for p in prob_columns(labels)]],
                        ["emotion"] + labels)
        parts.append(f'<div class="track" id="p-{escape(record["video_id"])}-{pid}">'
                     f'{_thumb(thumbs.get(best), "; ".join(notes))}<div><b>person {pid}</b> '
                     f'(track{"s" if s.n_tracks > 1 else ""} {s.tracks}): dominant '
                     f'<b class="dominant">{escape(s.dominant)}</b>, {s.start_s:.1f}-{s.end_s:.1f} s '
                     f'({s.seconds:.1f} s with the face, {int(s.n_segments)} segments, mean confidence '
                     f'{s.mean_confidence:.2f})<br>{timeline_svg(g, labels, end)}{shares}</div></div>')
    return "".join(parts)


def people_html(people: pd.DataFrame | None, records: list[dict], loaded: dict) -> str:
    """The people section (``people.parquet``'s rows): per global person its face and the files and person ids it
    is in; a note when the file no longer matches the run's timelines (``loaded``). Empty without the file."""
    if people is None:
        return ""
    now = {(vid, int(p)) for vid, (df, _, _) in loaded.items() if df is not None and len(df)
           for p in persons(df)["person_id"].unique()}
    names = {r["video_id"]: storage.name(r["video_path"]) for r in records}
    parts = [f'<section id="people"><h2>People across the run ({people["global_person_id"].nunique()})</h2>']
    if set(zip(people["video_id"], people["person_id"].astype(int))) != now:
        parts.append('<p class="note">people.parquet does not match the timelines of this run (written before '
                     "its last run): run s2d people again</p>")
    parts.append('<div class="faces">')
    for gid, rows in people.groupby("global_person_id", sort=True):
        thumb = next((t for t in rows["thumbnail"] if t), None)
        where = [f"{names.get(v, v)} person {p}" for v, p in zip(rows["video_id"], rows["person_id"])]
        parts.append(f'<figure class="person">{_thumb(thumb, "no thumbnail")}<figcaption><b>person {gid}</b>: '
                     f'{len(rows)} file{"s" if len(rows) > 1 else ""}<br><span class="small">'
                     f'{escape(", ".join(where))}</span></figcaption></figure>')
    return "".join(parts) + "</div></section>"


def _video_html(m: dict, cache_dir, record: dict, loaded: tuple) -> str:
    """One file's section; ``loaded``: its ``_load_timeline`` (or (None, labels, None) when it has no timeline)."""
    image = record.get("kind") == "image"
    name, status = storage.name(record["video_path"]), record.get("status", "?")
    df, labels, stored = loaded
    rows = df is not None and len(df) > 0
    notes = ["the timeline file is missing"] if status == "ok" and df is None else []
    thumbs, duration = {}, record.get("duration_s")
    if rows:
        thumbs, duration, found = _faces_and_duration(m, cache_dir, record, stored)
        notes += found
    head = [("status", status), ("file", record["video_path"])]
    if not image:
        head.append(("duration", f"{duration:.2f} s" if duration else "unknown"))
    head += [("tracks", record.get("n_tracks", 0)), ("persons", record.get("n_persons", record.get("n_tracks", 0))),
             ("segments", record.get("n_segments", 0))]
    if record.get("error"):
        head.append(("reason", record["error"]))
    parts = [f'<article class="video" id="v-{escape(record["video_id"])}"><h3>{escape(name)} '
             f'<span class="small">({escape(status)})</span></h3>', _table(head)]
    parts += [f'<p class="note">{escape(n)}</p>' for n in notes]
    if rows:
        parts += [legend(labels), _image_faces(df, labels, thumbs) if image else
                  _video_persons(record, df, labels, thumbs, _tracks(m, cache_dir, record, df), duration, notes)]
    return "".join(parts) + "</article>"


def build_report(out_dir) -> str:
    """The page's HTML (see the module docstring)."""
    out_dir = storage.location(out_dir)
    m = read_manifest(out_dir)
    cache_dir = run_cache(out_dir, m)
    records = m.get("videos") or []
    counts = Counter(r.get("status", "?") for r in records)
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    warnings = [w for w in (m.get("warning"), m.get("image_warning")) if w]
    warnings = [w for i, w in enumerate(warnings) if not any(w in v for v in warnings[:i])]  # said once
    weights = [(k, _value(v)) for k, v in (m.get("weights") or {}).items()]
    weights += [(f"image {k}", _value(v)) for k, v in (m.get("image_weights") or {}).items()]
    weights += [(f"input {k}", _value(v)) for k, v in (m.get("input") or {}).items() if v is not None]
    weights += [(f"image input {k}", _value(v)) for k, v in (m.get("image_input") or {}).items() if v is not None]
    weights += [("classes", ", ".join(m.get("labels") or []))]
    if m.get("image_labels"):
        weights.append(("image classes", ", ".join(m["image_labels"])))
    settings = [(k, _value(v)) for k, v in (m.get("settings") or {}).items()]
    settings += [(f"faces.{k}", _value(v)) for k, v in (m.get("face_settings") or {}).items()]
    settings += [("face settings hash", m.get("face_settings_hash", "")), ("cache", str(cache_dir))]
    bad = [(storage.name(r["video_path"]), r.get("status"), r.get("error") or
            ("no faces found" if r.get("status") == "no_faces" else "")) for r in records if r.get("status") != "ok"]
    wall = m.get("wall_seconds")
    run = [("output", str(out_dir)), ("files", len(records))] + [(s, counts[s]) for s in order] + [
        ("kept from an earlier run", m.get("skipped", 0)), ("clips classified", m.get("clips_classified", 0)),
        ("wall time", f"{wall:.1f} s" if isinstance(wall, (int, float)) else "unknown")]
    videos = [r for r in records if r.get("kind", "video") != "image"]
    images = [r for r in records if r.get("kind") == "image"]
    body = [f'<h1>s2d report: {escape(storage.name(out_dir))}</h1>']
    body += [f'<p class="warning">WARNING: {escape(w)}</p>' for w in warnings]
    loaded = {r["video_id"]: _load_timeline(out_dir, r, _labels(m, r)) if r.get("status") == "ok" else
              (None, _labels(m, r), None) for r in records}  # each timeline read once
    body += ['<section id="overview"><h2>Overview</h2>', overview(records, loaded), "</section>",
             people_html(read_people(out_dir), records, loaded)]
    for title, sid, recs in (("Videos", "videos", videos), ("Images", "images", images)):
        if recs:
            body += [f'<section id="{sid}"><h2>{title} ({len(recs)})</h2>']
            body += [_video_html(m, cache_dir, r, loaded[r["video_id"]]) for r in recs] + ["</section>"]
    body += [f'<section id="errors"><h2>Errors and files without a timeline ({len(bad)})</h2>',
             _table(bad, ("file", "status", "reason")) if bad else "<p>none</p>", "</section>",
             '<section id="run"><h2>Run</h2>', _table(run), "<h3>Weights</h3>", _table(weights),
             "<h3>Settings</h3>", _pairs(settings), "<h3>Versions</h3>",
             _pairs([(k, _value(v)) for k, v in (m.get("versions") or {}).items()], 5), "</section>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>s2d report: '
            f'{escape(storage.name(out_dir))}</title><style>{STYLE}</style></head><body>\n'
            + "\n".join(body) + "\n</body></html>\n")


def write_report(out_dir, path=None):
    """Write the report of an ``s2d annotate --out`` folder to ``path`` (default ``OUT/report.html``, atomically;
    local or a URI) and return where it went. FileNotFoundError when the folder has no manifest.json."""
    html = build_report(out_dir)
    return storage.write(path or storage.join(storage.location(out_dir), "report.html"), display(html))
