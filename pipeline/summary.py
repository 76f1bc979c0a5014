"""Timeline summaries: per person (a video's tracks of one person together: ``person_id``), the dominant emotion
and the share of time per emotion (``s2d timeline``'s text table and the report's numbers), and the PNG plot of
the class probabilities over each video, a panel per person.

Reads timeline rows as ``pipeline.timeline.read_timelines`` gives them (pandas, one row per (track, segment)).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .timeline import class_column, prob_columns


def _covered_seconds(start: np.ndarray, end: np.ndarray) -> float:
    """Length of the union of [start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(zip(start.tolist(), end.tolist())):
        if cur_e is None or s > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0.0 if cur_e is None else cur_e - cur_s)


def persons(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a person_id column (timelines written before persons lack it: each track its own person)."""
    return df if "person_id" in df.columns else df.assign(person_id=df["track_id"])


def summarize(df: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per (video_path, person_id), over the person's tracks: video_id, tracks (their ids, "0, 2"),
    n_tracks, n_segments, seconds (per track the union of its segments, summed over its tracks), start_s, end_s,
    dominant (most frequent label; ties -> the higher mean probability, then label-set order), mean_confidence,
    share_<class> per class (fraction of the person's segments with that label). ``labels`` may be the label set
    or the class parts of the p_ column names (labels are matched case-insensitively, spaces as "_")."""
    labels = list(labels)
    classes = [class_column(c) for c in labels]
    columns = ["video_path", "video_id", "person_id", "tracks", "n_tracks", "n_segments", "seconds", "start_s",
               "end_s", "dominant", "mean_confidence"] + [f"share_{c}" for c in classes]
    if df.empty:
        return pd.DataFrame([], columns=columns)
    df = persons(df)
    # segments per (person, label), labels compared as in the column names ("Happy" == "happy"); others not counted
    per_label = pd.crosstab([df["video_path"], df["person_id"]], df["label"].map(class_column))
    per_label = per_label.reindex(columns=classes, fill_value=0)
    out = []
    for (path, pid), g in df.groupby(["video_path", "person_id"], sort=True):
        counts = per_label.loc[(path, pid)].to_numpy(np.float64)  # [C]
        mean_p = g[prob_columns(labels)].mean().to_numpy(np.float64)  # [C]
        dominant = labels[max(range(len(labels)), key=lambda i: (counts[i], mean_p[i], -i))]
        tracks = sorted(int(t) for t in g["track_id"].unique())
        seconds = sum(_covered_seconds(t["start_s"].to_numpy(), t["end_s"].to_numpy())
                      for _, t in g.groupby("track_id"))
        out.append([path, g["video_id"].iloc[0], int(pid), ", ".join(map(str, tracks)), len(tracks), len(g), seconds,
                    float(g["start_s"].min()), float(g["end_s"].max()), dominant, float(g["confidence"].mean())]
                   + list(counts / len(g)))
    return pd.DataFrame(out, columns=columns)


def format_summary(summary: pd.DataFrame) -> str:
    """A readable text table: video file, person, its tracks, segments, seconds, dominant emotion, shares in %."""
    if summary.empty:
        return "no tracks"
    shares = [c for c in summary.columns if c.startswith("share_")]
    t = pd.DataFrame({
        "video": [Path(p).name for p in summary["video_path"]],
        "person": summary["person_id"],
        "tracks": summary["tracks"],
        "segments": summary["n_segments"],
        "seconds": summary["seconds"].map(lambda v: f"{v:.1f}"),
        "dominant": summary["dominant"],
    })
    for c in shares:
        t[c[len("share_"):]] = summary[c].map(lambda v: f"{100 * v:.0f}%")
    return t.to_string(index=False)


def person_panels(df: pd.DataFrame, durations: dict | None = None) -> list[tuple[str, int, pd.DataFrame, tuple]]:
    """One panel per (video, person), in order: (video_path, person_id, its tracks' rows by time, (0, the video's
    duration)). ``durations``: video_id -> seconds (the manifest's); without one, the video's last segment end."""
    durations = durations or {}
    ends = df.groupby("video_id")["end_s"].max().to_dict()
    panels = []
    for (path, pid), g in persons(df).groupby(["video_path", "person_id"], sort=True):
        vid = g["video_id"].iloc[0]
        panels.append((path, int(pid), g.sort_values(["start_s", "end_s"]),
                       (0.0, float(durations.get(vid) or ends[vid]))))
    return panels


def plot_timeline(df: pd.DataFrame, labels: Sequence[str], path_png, video: str | None = None,
                  durations: dict | None = None, warning: str | None = None) -> Path:
    """PNG: one panel per (video, person), class probabilities over the whole video (x = segment centre, s, from 0
    to the video's duration, see ``person_panels``; a gap between its tracks or in one is a gap in the line);
    ``warning`` (e.g. untrained weights) in red above them.
    ``video`` keeps the rows whose video_path, its file name, or video_id equals it. Raises ValueError when nothing
    is left."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state (renders with Agg)
    import matplotlib

    labels = list(labels)
    if video is not None and len(df):
        keep = (df["video_path"] == video) | (df["video_id"] == video) | \
               (df["video_path"].map(lambda p: Path(p).name) == video)
        df = df[keep]
    if df is None or len(df) == 0:
        raise ValueError("plot_timeline: no timeline rows to plot" + (f" for video {video!r}" if video else ""))
    panels = person_panels(df, durations)
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    fig = Figure(figsize=(11, 1.0 + 2.4 * len(panels) + (0.4 if warning else 0)), dpi=100, layout="constrained")
    if warning:
        fig.suptitle(f"WARNING: {warning}", color="#c00000", fontsize=11, fontweight="bold")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (path, pid, g, xlim) in zip(axes, panels):
        start, end = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        gap = np.r_[False, start[1:] > np.maximum.accumulate(end)[:-1]]  # [n] after a hole: break the line
        at = np.flatnonzero(gap)
        x = np.insert((start + end) / 2, at, np.nan)  # segment centres, NaN at holes
        for j, (c, col) in enumerate(zip(labels, prob_columns(labels))):
            y = np.insert(g[col].to_numpy(np.float64), at, np.nan)
            ax.plot(x, y, marker="o", ms=3, lw=1.5, color=cmap(j % cmap.N), label=c)
        ax.set_ylim(0, 1)
        ax.set_xlim(*xlim)
        ax.set_ylabel("probability")
        tracks = ", ".join(str(t) for t in sorted(g["track_id"].unique()))
        ax.set_title(f"{Path(path).name} - person {pid} (track{'s' if ',' in tracks else ''} {tracks})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time in the video (s), segment centre")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png)
    return path_png
