"""`s2d`: the command line. Thin: parse options, call one function of pipeline/, jobs/ or s2d_model/, print."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from pipeline import storage
from pipeline.cluster import ClusterError
from pipeline.crops import FRAME_ORDERS
from pipeline.settings import DECODERS, DETECTORS, LANDMARKS

# rich_markup_mode=None: Click's plain help (flags without a "<bool>" type) and one-line usage errors
app = typer.Typer(help="s2d-pipeline: faces, tracks and S2D emotion timelines for folders of videos, on Ray.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None)
weights_app = typer.Typer(help="Known model weights: list, download, import local files.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(weights_app, name="weights")
train_app = typer.Typer(help="Train S2D on Ray Train: the static image stage, then the dynamic video stage.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(train_app, name="train")
crops_app = typer.Typer(help="Face crops: what a model's training crops look like, and the --crop that cuts them.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(crops_app, name="crops")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s2d-pipeline")
    except PackageNotFoundError:
        return "unknown (not installed)"


@app.command("version")
def version_cmd():
    """Print the versions of s2d-pipeline and the libraries it runs on."""
    import av
    import pyarrow
    import ray
    import timm
    import torch

    typer.echo(f"s2d-pipeline {_version()}")
    typer.echo(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), timm {timm.__version__}, "
               f"ray {ray.__version__}, pyav {av.__version__}, pyarrow {pyarrow.__version__}")


@crops_app.command("measure")
def crops_measure_cmd(
    frames: list[str] = typer.Argument(..., metavar="FRAMES...", help="face crops of a data set: image files or "
                                       "folders (searched recursively), e.g. DFEW's clip_224x224_16f/"),
    sample: int = typer.Option(50, min=1, help="files measured, spread over the sorted list"),
    detector_weights: Optional[str] = typer.Option(None, envvar="S2D_DETECTOR_WEIGHTS",
                                                   help="RetinaFace MobileNet-0.25 weights file or name"),
):
    """Run our detector on a sample of a data set's face crops and print their geometry (eye distance, eye and
    mouth position, roll, aspect) and the --crop that cuts the same crop from raw video."""
    from pipeline.crop_measure import measure_crops
    from s2d_model.weights import WeightsNotFound, resolve

    try:
        m = measure_crops(frames, resolve(detector_weights or "retinaface-mobilenet"), sample=sample)
    except (WeightsNotFound, ValueError) as e:
        _fail(str(e))
    typer.echo(m.table())


@weights_app.command("list")
def weights_list():
    """Show the known weights, where each comes from, and whether it is on this machine."""
    from s2d_model import weights as W

    typer.echo(f"cache: {W.cache_dir()}" + (f"   ${W.ENV_DIR}: {__import__('os').environ[W.ENV_DIR]}"
                                             if __import__("os").environ.get(W.ENV_DIR) else ""))
    for spec in W.KNOWN.values():
        found = W.locate(spec.name)
        typer.echo(f"{spec.name:24s} {spec.kind:10s} {'present: ' + str(found) if found else 'missing'}")
        typer.echo(f"{'':24s} {spec.description}")
        typer.echo(f"{'':24s} source: {W.source_of(spec)}")
    for name, path in sorted(W.imported().items()):
        typer.echo(f"{name:24s} {'imported':10s} {path}")


@weights_app.command("download")
def weights_download(name: str = typer.Argument(..., help="a name from `s2d weights list`")):
    """Download known weights into the cache (resumable, sha256-checked where the checksum is known)."""
    from s2d_model import weights as W

    try:
        path = W.download(name)
    except W.WeightsNotFound as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: {path}")


@weights_app.command("import")
def weights_import(path: Path = typer.Argument(..., help="a local weights file"),
                   name: str = typer.Option(..., "--name", help="the name to register it under")):
    """Register a local file under a name (e.g. the authors' DFEW file under `s2d-dfew`)."""
    from s2d_model import weights as W

    try:
        p = W.import_file(path, name)
    except W.WeightsNotFound as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"registered {name} -> {p}")


@weights_app.command("path")
def weights_path(name: str = typer.Argument(..., help="a known or imported name")):
    """Print where weights NAME are, or what to download and where to put it."""
    from s2d_model import weights as W

    try:
        typer.echo(str(W.resolve(name)))
    except W.WeightsNotFound as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


def positive(v):
    """Option check: > 0 (Typer's min= is inclusive)."""
    if v is not None and not v > 0:
        raise typer.BadParameter(f"must be > 0, not {v}")
    return v


def unit_interval(v):
    """Option check: in (0, 1]."""
    if not 0 < v <= 1:
        raise typer.BadParameter(f"must be in (0, 1], not {v}")
    return v


def crop_spec(v):
    """Option check: a crop spec (pipeline.crops), or None."""
    from pipeline.crops import parse_crop

    try:
        return None if v is None else str(parse_crop(v))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


CROP_HELP = ("the face crop the model takes: template[:MARGIN][@SIZE] (5-point alignment), box[:SCALE][@SIZE] "
             "(detector box, squared) or mtcnn[@SIZE] (the authors' MAFW crop) [default: what the weights were "
             "trained on; README \"Crops and frame order\"]")
SHARD_HELP = ("seconds per time shard: a longer video is split so that several face actors share it [default: 60, "
              "and no more shards than there are face actors]")


def _choices(name: str, values) -> type[Enum]:
    """A Typer choice: an str Enum whose members are ``values`` (as names and values)."""
    return Enum(name, {v: v for v in values}, type=str)


Detector = _choices("Detector", DETECTORS)
Landmarks = _choices("Landmarks", LANDMARKS)
Decoder = _choices("Decoder", DECODERS)
Device = _choices("Device", ("auto", "cpu", "cuda"))
FrameOrder = _choices("FrameOrder", FRAME_ORDERS)
DEVICE_HELP = "auto (GPU when the cluster has one), cpu or cuda"


ADDRESS = typer.Option(None, help="Ray cluster address (default: a local cluster)")
VERBOSE = typer.Option(False, "-v", "--verbose", help="show Ray's own messages too (start-up, dataset plans, "
                       "warnings from its C++ side)")


def _ray_output(verbose: bool) -> None:
    """Before Ray starts. ``-v``: S2D_VERBOSE=1 (Ray's loggers as Ray sets them). Otherwise, in a real ``s2d``
    process, what Ray's C++ side writes to file descriptor 2 (an error-level line for every Ray Data actor pool)
    goes to /dev/null, while Python's ``sys.stderr`` (our messages, the progress bar, tracebacks) moves to a copy
    of the terminal's descriptor; Ray's log files keep everything."""
    import os
    import sys

    if verbose:
        os.environ["S2D_VERBOSE"] = "1"
        return
    if sys.stderr is not sys.__stderr__ or sys.stderr is None:
        return  # captured (tests, CliRunner): leave the descriptors alone
    sys.stderr.flush()
    terminal = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = sys.__stderr__ = os.fdopen(terminal, "w", buffering=1, errors="backslashreplace")


def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _report_failures(videos: list[dict], path_key: str) -> None:
    for v in videos:
        if v["status"] == "error":
            path, reason = str(v[path_key]), str(v["error"])
            reason = reason.removeprefix(f"{path}: ")  # most reasons start with the path already
            typer.echo(f"failed: {path}: {reason}", err=True)


@app.command("faces")
def faces_cmd(
    paths: list[str] = typer.Argument(..., metavar="PATHS...", help="video and image files (JPEG, PNG, WebP, BMP) or "
                                      "folders (searched recursively), local or URIs (s3://bucket/videos/)"),
    cache: str = typer.Option(..., "--cache", help="landmark cache folder (Parquet, one entry per video), local or a "
                              "URI"),
    fps: float = typer.Option(8.0, callback=positive, help="analysis rate: frames sampled per second, by timestamp"),
    detector: Detector = typer.Option(Detector("retinaface-mobilenet"), help="face detector"),
    detector_weights: Optional[str] = typer.Option(
        None, envvar="S2D_DETECTOR_WEIGHTS", help="detector weights file or name (default: the detector's usual file, "
        "looked up in $S2D_WEIGHTS_DIR, then the cache)"),
    landmarks: Landmarks = typer.Option(Landmarks("mobilefacenet"), help="face-stage 68-point landmarks"),
    landmark_weights: Optional[str] = typer.Option(
        None, envvar="S2D_LANDMARK_WEIGHTS", help="landmark weights file or name (default: the backend's usual file)"),
    score_threshold: float = typer.Option(0.6, callback=unit_interval, help="minimum face score"),
    nms_threshold: float = typer.Option(0.4, callback=unit_interval, help="NMS IoU threshold"),
    long_side: int = typer.Option(640, min=32, help="frames are resized to this long side for detection"),
    decoder: Decoder = typer.Option(Decoder("pyav"), help="video decoder (decord leaks memory on long files)"),
    shard: Optional[float] = typer.Option(None, callback=positive, help=SHARD_HELP),
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
    device: Device = typer.Option(Device("auto"), help=DEVICE_HELP),
):
    """Find, landmark and track every face in every video; write the Parquet landmark cache."""
    _ray_output(verbose)
    from pipeline.faces_run import run_faces
    from pipeline.settings import FaceSettings
    from s2d_model.weights import WeightsNotFound

    settings = FaceSettings(fps=fps, detector=detector.value, detector_weights=detector_weights,
                            landmarks=landmarks.value, landmark_weights=landmark_weights,
                            score_threshold=score_threshold, nms_threshold=nms_threshold, long_side=long_side,
                            decoder=decoder.value, shard_s=shard)
    try:
        result = run_faces([str(p) for p in paths], cache, settings, device=device.value, address=address)
    except (WeightsNotFound, FileNotFoundError, NotADirectoryError, ValueError, ClusterError) as e:
        _fail(str(e))
    _report_failures(result.videos, "source_path")
    typer.echo(result.summary())
    typer.echo(f"cache: {storage.join(cache, 'faces', result.settings_hash)}")
    if result.interrupted:
        _fail("interrupted: the videos not done have no cache entry yet; run again to finish", 130)
    if result.count("error") == len(result.videos):
        _fail(f"every input failed ({len(result.videos)} of {len(result.videos)})")


@app.command("annotate")
def annotate_cmd(
    paths: list[str] = typer.Argument(..., metavar="PATHS...", help="video and image files (JPEG, PNG, WebP, BMP) or "
                                      "folders (searched recursively), local or URIs (s3://bucket/videos/)"),
    out: str = typer.Option(..., "--out", help="output folder: one timeline Parquet per video or image + "
                            "manifest.json; local or a URI (s3://bucket/run/)"),
    weights: str = typer.Option("s2d-dfew", envvar="S2D_WEIGHTS", help="S2D weights: a name from `s2d weights "
                                "list`, a file, faceapi-expression (face-api's per-frame expression net, or a path "
                                "to its weights manifest), or random-tiny (untrained, smoke tests only)"),
    image_weights: str = typer.Option("s2d-affectnet7-image", envvar="S2D_IMAGE_WEIGHTS",
                                      help="still images: S2D's static image model (the first training stage): a "
                                      "name, a file, faceapi-expression, or random-tiny; needed only when there are "
                                      "images"),
    crop: Optional[str] = typer.Option(None, callback=crop_spec, help=CROP_HELP),
    image_crop: Optional[str] = typer.Option(None, callback=crop_spec, help="the same for the image model"),
    frame_order: Optional[FrameOrder] = typer.Option(
        None, help="the order of a clip's 16 frames as S2D sees them: time, or lexicographic (frames named 1..16 "
        "sorted by name: 1, 10-16, 2-9, as s2d-dfew was trained) [default: the weights' training order]"),
    labels: Optional[str] = typer.Option(None, help="label set (dfew, ferv39k, mafw, ...) or class names a,b,c; "
                                         "default: the weights'"),
    segment: float = typer.Option(2.0, callback=positive, help="segment length in seconds"),
    stride: float = typer.Option(1.0, callback=positive, help="seconds between segment starts"),
    min_face_frames: int = typer.Option(8, min=1, max=16,
                                        help="skip a segment whose face is in fewer of its 16 frames"),
    views: int = typer.Option(1, min=1, max=2, help="2: test-time views, a window's first and last 16 sampled "
                              "frames with their probabilities averaged (the authors' protocol), where the window "
                              "holds more than 16 (e.g. --segment 4 at --fps 8)"),
    batch_size: Optional[int] = typer.Option(None, min=1,
                                             help="clips per S2D forward pass [default: 8 on a GPU, 1 on CPU, "
                                             "where one clip at a time is fastest]"),
    cache: Optional[str] = typer.Option(None, "--cache", help="landmark cache folder, local or a URI "
                                        "[default: OUT/cache]"),
    force: bool = typer.Option(False, "--force", help="redo videos whose timeline already exists"),
    report: bool = typer.Option(True, "--report/--no-report", help="write OUT/report.html at the end (see `s2d "
                                "report`)"),
    overlay: bool = typer.Option(False, "--overlay", help="also write an overlay video per video with faces into "
                                 "OUT/overlays/ (see `s2d overlay`)"),
    fps: float = typer.Option(8.0, callback=positive, help="analysis rate of the face stage (frames per second)"),
    detector: Detector = typer.Option(Detector("retinaface-mobilenet"), help="face detector"),
    detector_weights: Optional[str] = typer.Option(None, envvar="S2D_DETECTOR_WEIGHTS",
                                                   help="detector weights file or name"),
    landmarks: Landmarks = typer.Option(Landmarks("mobilefacenet"), help="face-stage 68-point landmarks"),
    landmark_weights: Optional[str] = typer.Option(
        None, envvar="S2D_LANDMARK_WEIGHTS", help="MobileFaceNet file (face stage and S2D's landmark branch); with "
        "--landmarks fan, the FAN file"),
    score_threshold: float = typer.Option(0.6, callback=unit_interval, help="minimum face score"),
    nms_threshold: float = typer.Option(0.4, callback=unit_interval, help="NMS IoU threshold"),
    long_side: int = typer.Option(640, min=32, help="frames are resized to this long side for detection"),
    decoder: Decoder = typer.Option(Decoder("pyav"), help="video decoder (decord leaks memory on long files)"),
    shard: Optional[float] = typer.Option(None, callback=positive, help=SHARD_HELP),
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
    device: Device = typer.Option(Device("auto"), help=DEVICE_HELP),
    trust: bool = typer.Option(False, "--trust", help="load a --weights file that holds pickled Python code (only "
                               "a file you made or trust: loading it runs that code)"),
):
    """Write a per-track, per-segment emotion timeline (Parquet) for every face in every video, and the faces of
    every still image (one row each)."""
    _ray_output(verbose)
    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings, FaceSettings
    from s2d_model.weights import WeightsNotFound

    face_settings = FaceSettings(fps=fps, detector=detector.value, detector_weights=detector_weights,
                                 landmarks=landmarks.value, landmark_weights=landmark_weights,
                                 score_threshold=score_threshold, nms_threshold=nms_threshold, long_side=long_side,
                                 decoder=decoder.value, shard_s=shard)
    s2d_landmarks = landmark_weights if landmarks.value == "mobilefacenet" else None
    settings = AnnotateSettings(weights=weights, image_weights=image_weights, labels=labels,
                                s2d_landmark_weights=s2d_landmarks,
                                segment_s=segment, stride_s=stride, min_face_frames=min_face_frames, views=views,
                                batch_size=batch_size, crop=crop, image_crop=image_crop,
                                frame_order=frame_order.value if frame_order else None)
    if weights == "random-tiny":
        from pipeline.emotions import UNTRAINED_WARNING

        typer.echo(f"WARNING: {UNTRAINED_WARNING}", err=True)
    try:
        result = run_annotate([str(p) for p in paths], out, cache, face_settings, settings, device=device.value,
                              address=address, force=force, trust=trust, report=report, overlay=overlay)
    except (WeightsNotFound, FileNotFoundError, NotADirectoryError, ValueError, ClusterError) as e:
        _fail(str(e))
    _report_failures(result.videos, "video_path")
    typer.echo(result.summary())
    typer.echo(f"timelines: {out}  (manifest: {storage.join(out, 'manifest.json')}; summary: s2d timeline {out})")
    for v in result.videos:
        if v.get("overlay_error"):
            typer.echo(f"failed: {v['video_path']}: {v['overlay_error']}", err=True)
    if overlay:
        typer.echo(f"overlays: {sum(bool(v.get('overlay')) for v in result.videos)} in {storage.join(out, 'overlays')}")
    if result.report:
        typer.echo(f"report: {result.report}")
    elif result.report_error:
        typer.echo(f"failed: {result.report_error}", err=True)
    if result.interrupted:
        _fail("interrupted: the videos not done are marked 'interrupted' in the manifest; run again to finish", 130)
    if result.warning:
        typer.echo(f"WARNING: {result.warning}", err=True)
    if result.count("error") == len(result.videos):
        _fail(f"every input failed ({len(result.videos)} of {len(result.videos)})")


@app.command("timeline")
def timeline_cmd(
    out: str = typer.Argument(..., help="an `s2d annotate --out` folder (local or a URI)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the timelines to this PNG file: one panel "
                                        "per track over the whole video, untrained weights flagged"),
    video: Optional[str] = typer.Option(None, help="only this video (file name or video_id)"),
):
    """Summarise timelines: per video and track, the dominant emotion and the share of time per emotion."""
    from pipeline.timeline import (by_label_set, format_summary, plot_timeline, read_manifest, read_timelines,
                                   summarize)

    df = read_timelines(out)
    if video is not None:
        df = df[(df.video_id == video) | (df.video_path.map(storage.name) == video)]
    if df.empty:
        _fail(f"no timeline rows in {out}" + (f" for {video}" if video else ""))
    groups = by_label_set(out, df)  # videos and images may be labelled with different label sets
    for labels, rows in groups:
        if len(groups) > 1:
            typer.echo(f"label set: {', '.join(labels)}")
        typer.echo(format_summary(summarize(rows, labels)))
    if plot is not None:
        moving = df.groupby("video_id")["end_s"].transform("max") > 0  # still images have no time axis
        labels, df = next(((labels, rows[moving[rows.index]]) for labels, rows in groups if moving[rows.index].any()),
                          ([], None))
        if df is None:
            _fail(f"no video timelines to plot in {out} (still images have no time axis)")
        from pipeline.emotions import UNTRAINED_WARNING

        try:
            m = read_manifest(out)
        except FileNotFoundError:  # timeline files alone (copied out of their run): no durations, no warning
            m = {}
        warning = m.get("warning") or (UNTRAINED_WARNING if (df["model"] == "random-tiny").any() else None)
        plot_timeline(df, labels, plot, durations={v["video_id"]: v.get("duration_s") for v in m.get("videos", [])},
                      warning=warning)
        typer.echo(f"plot: {plot}")


@app.command("overlay")
def overlay_cmd(
    out: str = typer.Argument(..., help="an `s2d annotate --out` folder (local or a URI)"),
    video: str = typer.Argument(..., help="a video of that run: its file name, path or video_id"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="the MP4 file to write (local or a URI; a "
                                         "folder gets the default name in it) [default: "
                                         "OUT/overlays/<stem>.<video_id>.overlay.mp4]"),
):
    """Draw the run's face boxes, track ids and emotions onto a video: H.264 MP4 at the video's own frame rate and
    size, its audio copied. Reads only the landmark cache and the timeline (no model runs)."""
    from pipeline.decode import DecodeError
    from pipeline.overlay import write_overlay

    try:
        path = write_overlay(out, video, output)
    except (DecodeError, OSError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"overlay: {path}")


@app.command("report")
def report_cmd(
    out: str = typer.Argument(..., help="an `s2d annotate --out` folder (local or a URI)"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="where to write the page, a path or URI "
                                         "[default: OUT/report.html]"),
):
    """Write one self-contained HTML page of a run (no network: opens from disk in any browser): settings,
    errors, and per track a face thumbnail, its emotion timeline over the whole video and the share per emotion."""
    from pipeline.report import write_report

    try:
        path = write_report(out, output)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"report: {path}")


# ------------------------------------------------------------------------------------------ training jobs
LANDMARK_HELP = "MobileFaceNet file or name for S2D's landmark branch [default: mobilefacenet, looked up in " \
                "$S2D_WEIGHTS_DIR, then the cache]"


# the options both training stages take, declared once
OUT_RUN = typer.Option(..., "--out", help="run folder (a path or URI): checkpoints, metrics.csv/jsonl, best.pth, "
                       "last.pth")
MODEL = typer.Option("s2d_base_patch16_224", help="model configuration (s2d_tiny for smoke runs)")
EPOCHS = typer.Option(100, min=1, help="epochs")
WORKERS = typer.Option(1, min=1, help="training workers (processes; one GPU each with --gpus-per-worker 1)")
GPUS_PER_WORKER = typer.Option(0, min=0, help="GPUs per worker (0: train on CPU)")
CPUS_PER_WORKER = typer.Option(1, callback=positive, help="CPUs reserved per worker")
SEED = typer.Option(0, help="random seed")
VAL_FRACTION = typer.Option(0.1, min=0, max=0.9, help="share of the training data held out to pick the best epoch")
MIXUP = typer.Option(None, "--mixup/--no-mixup", help="mixup/cutmix [default: the recipe's]")
MAX_FAILURES = typer.Option(0, min=0, help="restart a failed worker group up to N times from the last checkpoint")
TRUST_INIT = typer.Option(False, help="allow arbitrary pickled objects in the --init file")


def _train(stage: str, data: Path, format: str, out: Path, **options) -> None:
    from jobs.datasets import DatasetError
    from jobs.train import train_dynamic, train_static
    from s2d_model.weights import WeightsNotFound

    options = {k: v for k, v in options.items() if v is not None}
    try:
        summary = (train_static if stage == "static" else train_dynamic)(data, format, out, **options)
    except (WeightsNotFound, DatasetError, FileNotFoundError, ValueError, ClusterError) as e:
        _fail(str(e))
    best = summary.get("best_metrics") or {}
    score = (f" (val UAR {100 * best['val_uar']:.2f}, WAR {100 * best['val_war']:.2f}, epoch {best['epoch'] + 1})"
             if best.get("val_uar") is not None else "")
    typer.echo(f"best checkpoint: {summary['best_checkpoint']}{score}")
    typer.echo(f"last checkpoint: {summary['last_checkpoint']}")
    typer.echo(f"metrics: {summary['metrics_csv']}")


@train_app.command("static")
def train_static_cmd(
    data: str = typer.Option(..., "--data", help="dataset root (or a CSV file for --format csv); a path or URI"),
    format: str = typer.Option(..., "--format", help="rafdb | affectnet7 | affectnet8 | csv"),
    out: str = OUT_RUN,
    labels: Optional[str] = typer.Option(None, help="csv format: a label set (rafdb, dfew, ...) or class names a,b,c"),
    model: str = MODEL,
    init: Optional[str] = typer.Option(None, help="start from this checkpoint (MAE/ViT or the authors' image model)"),
    epochs: int = EPOCHS,
    batch_size: int = typer.Option(8, min=1, help="samples per worker and step"),
    lr: Optional[float] = typer.Option(None, callback=positive,
                                       help="base lr per 8 samples, scaled by the total batch [default 2.5e-6]"),
    workers: int = WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
    seed: int = SEED,
    val_fraction: float = VAL_FRACTION,
    mixup: Optional[bool] = MIXUP,
    max_failures: int = MAX_FAILURES,
    landmark_weights: str = typer.Option("mobilefacenet", envvar="S2D_LANDMARK_WEIGHTS", help=LANDMARK_HELP),
    trust: bool = TRUST_INIT,
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
):
    """Train the static image model (S2DImage) on RAF-DB / AffectNet-style data. Re-running resumes."""
    _ray_output(verbose)
    _train("static", data, format, out, labels=labels, model=model, init=init, epochs=epochs, batch_size=batch_size,
           lr=lr, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, seed=seed,
           val_fraction=val_fraction, mixup=mixup, max_failures=max_failures, landmark_weights=landmark_weights,
           trust=trust, address=address)


@train_app.command("dynamic")
def train_dynamic_cmd(
    data: str = typer.Option(..., "--data", help="dataset root (or a CSV file for --format csv); a path or URI"),
    format: str = typer.Option(..., "--format", help="dfew | ferv39k | mafw | csv"),
    out: str = OUT_RUN,
    fold: Optional[int] = typer.Option(None, min=1, max=5, help="DFEW / MAFW fold (1..5)"),
    labels: Optional[str] = typer.Option(None, help="csv format: a label set (dfew, ...) or class names a,b,c"),
    init: Optional[str] = typer.Option(None, help="static checkpoint to start from (e.g. s2d-affectnet7-image or a "
                                       "`s2d train static` best.pth); without it: random init, with a warning"),
    model: str = MODEL,
    epochs: int = EPOCHS,
    batch_size: int = typer.Option(8, min=1, help="clips per worker and step"),
    lr: Optional[float] = typer.Option(None, callback=positive,
                                       help="base lr per 8 clips, scaled by the total batch [default 1e-5]"),
    workers: int = WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    cpus_per_worker: float = CPUS_PER_WORKER,
    seed: int = SEED,
    oversample: bool = typer.Option(False, help="draw classes near-uniformly every epoch"),
    sdl: bool = typer.Option(False, help="emotion-anchor self-distillation loss"),
    frame_order: str = typer.Option("time", help="time | lexicographic: how a frame folder's files are ordered "
                                    "(lexicographic: 1, 10..16, 2..9 by name, as the authors trained s2d-dfew); "
                                    "recorded in the checkpoint"),
    val_fraction: float = VAL_FRACTION,
    mixup: Optional[bool] = MIXUP,
    max_failures: int = MAX_FAILURES,
    landmark_weights: str = typer.Option("mobilefacenet", envvar="S2D_LANDMARK_WEIGHTS", help=LANDMARK_HELP),
    trust: bool = TRUST_INIT,
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
):
    """Fine-tune the video model (S2DVideo) on DFEW / FERV39K / MAFW-style clips. Re-running resumes."""
    _ray_output(verbose)
    _train("dynamic", data, format, out, fold=fold, labels=labels, init=init, model=model, epochs=epochs,
           batch_size=batch_size, lr=lr, workers=workers, gpus_per_worker=gpus_per_worker,
           cpus_per_worker=cpus_per_worker, seed=seed, oversample=oversample, sdl=sdl, val_fraction=val_fraction,
           mixup=mixup, max_failures=max_failures, landmark_weights=landmark_weights, trust=trust, address=address,
           frame_order=frame_order)


@app.command("evaluate")
def evaluate_cmd(
    data: str = typer.Option(..., "--data", help="dataset root (or a CSV file for --format csv); a path or URI"),
    format: str = typer.Option(..., "--format", help="dfew | ferv39k | mafw | rafdb | affectnet7 | affectnet8 | csv"),
    checkpoint: str = typer.Option(..., "--checkpoint",
                                   help="a checkpoint file (a path or URI) or weights name (ours or the authors')"),
    out: Optional[str] = typer.Option(None, "--out",
                                      help="results folder, a path or URI [default: eval/<checkpoint>-<format>-<split>]"),
    fold: Optional[int] = typer.Option(None, min=1, max=5, help="DFEW / MAFW fold (1..5)"),
    split: str = typer.Option("test", help="which split to evaluate"),
    labels: Optional[str] = typer.Option(None, help="csv format: a label set or class names a,b,c"),
    batch_size: int = typer.Option(8, min=1, help="clips per forward pass"),
    workers: int = typer.Option(1, min=1, help="model actors"),
    gpus_per_worker: float = typer.Option(0, min=0, help="GPUs per actor"),
    landmark_weights: str = typer.Option("mobilefacenet", envvar="S2D_LANDMARK_WEIGHTS", help=LANDMARK_HELP),
    trust: bool = typer.Option(False, help="allow arbitrary pickled objects in the checkpoint"),
    frame_order: str = typer.Option("auto", help="auto | time | lexicographic: how a frame folder's files are "
                                    "ordered; auto: the checkpoint's training order (s2d-dfew: lexicographic, the "
                                    "authors' protocol; ours: as recorded; else time)"),
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
):
    """Evaluate a checkpoint on a dataset split: UAR, WAR, per-class recall, F1, confusion matrix.

    The authors' protocol: two temporal views per clip (first and last 16 frames), softmax averaged. Writes
    metrics.json, confusion.csv, confusion.png and predictions.csv to --out.
    """
    _ray_output(verbose)
    from jobs.datasets import DatasetError
    from jobs.evaluate import evaluate
    from s2d_model.weights import WeightsNotFound

    out = out or Path("eval") / f"{Path(checkpoint).stem}-{format}-{split}{'' if fold is None else f'-fold{fold}'}"
    try:
        m = evaluate(data, format, checkpoint, out, fold=fold, batch_size=batch_size, landmark_weights=landmark_weights,
                     address=address, split=split, labels=labels, workers=workers, gpus_per_worker=gpus_per_worker,
                     trust=trust, frame_order=frame_order)
    except (WeightsNotFound, DatasetError, FileNotFoundError, ValueError, ClusterError) as e:
        _fail(str(e))
    from pipeline import storage

    names = __import__("json").loads(storage.read_text(m["outputs"]["metrics"]))["labels"]
    typer.echo("recall per class: " + ", ".join(f"{n} -" if r is None or r != r else f"{n} {100 * r:.1f}"
                                               for n, r in zip(names, m["recall"])))  # -: not in the split
    typer.echo(f"results: {', '.join(m['outputs'].values())}")


@app.command("prepare")
def prepare_cmd(
    videos_csv: str = typer.Argument(..., help="CSV with path,label[,split] (paths relative to the CSV's folder); "
                                     "a path or URI"),
    out: str = typer.Option(..., "--out", help="dataset folder (a path or URI): clips/<name>/00001..00016.jpg, "
                            "train/val/test.csv"),
    labels: Optional[str] = typer.Option(None, help="check labels against a label set (dfew, ...) or names a,b,c"),
    force: bool = typer.Option(False, "--force", help="re-cut clips that already exist"),
    crop: str = typer.Option("template:0.25@224", help="the face crop of every frame: template[:MARGIN][@SIZE], "
                             "box[:SCALE][@SIZE] or mtcnn[@SIZE] (pipeline/crops.py); recorded in clip.json and "
                             "dataset.json (training stores it in the checkpoint); a clip cut otherwise is redone"),
    fps: float = typer.Option(8.0, callback=positive, help="analysis rate of the face stage (frames per second)"),
    detector: Detector = typer.Option(Detector("retinaface-mobilenet"), help="face detector"),
    detector_weights: Optional[str] = typer.Option(None, envvar="S2D_DETECTOR_WEIGHTS",
                                                   help="detector weights file or name"),
    landmarks: Landmarks = typer.Option(Landmarks("mobilefacenet"), help="face-stage 68-point landmarks"),
    landmark_weights: Optional[str] = typer.Option(None, envvar="S2D_LANDMARK_WEIGHTS",
                                                   help="landmark weights file or name"),
    decoder: Decoder = typer.Option(Decoder("pyav"), help="video decoder (decord leaks memory on long files)"),
    address: Optional[str] = ADDRESS,
    verbose: bool = VERBOSE,
    device: Device = typer.Option(Device("auto"), help=DEVICE_HELP),
):
    """Turn labelled raw videos into a DFEW-style clip dataset for training.

    Per video: the face stage, its longest face track, 16 frames spread over it, cut with --crop (by default
    aligned to 224 px as `s2d annotate` aligns them). `s2d train dynamic --format csv` and `s2d evaluate --format csv` read the result.
    """
    _ray_output(verbose)
    from jobs.datasets import DatasetError
    from jobs.prepare import prepare
    from pipeline.settings import FaceSettings
    from s2d_model.weights import WeightsNotFound

    faces = FaceSettings(fps=fps, detector=detector.value, detector_weights=detector_weights,
                         landmarks=landmarks.value, landmark_weights=landmark_weights, decoder=decoder.value)
    try:
        m = prepare(videos_csv, out, faces, labels=labels, device=device.value, address=address, force=force,
                    crop=crop)
    except (WeightsNotFound, DatasetError, FileNotFoundError, ValueError, ClusterError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted: the face cache under OUT/cache keeps the videos done; run again to finish", 130)
    bad = [v for v in m["videos"] if v["status"] != "ok"]
    for v in bad:
        typer.echo(f"left out: {v['path']}: {v['status']}" + (f": {v['error']}" if v["error"] else ""), err=True)
    typer.echo(f"clips: {len(m['videos']) - len(bad)} of {len(m['videos'])} videos ({m['clips_written']} written, "
               f"{m['clips_kept']} kept); " + ", ".join(f"{k}.csv {v['clips']}" for k, v in m["csv"].items()))
    typer.echo(f"dataset: {out}  (train on it: s2d train dynamic --data {out} --format csv"
               + (f" --labels {labels}" if labels else "") + " --init CKPT --out RUN)")
    if len(bad) == len(m["videos"]):
        _fail(f"no clip could be made ({len(bad)} of {len(bad)} videos left out)")


if __name__ == "__main__":
    app()
