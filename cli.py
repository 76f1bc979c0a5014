"""`s2d`: the command line. Thin: parse options, call one function of pipeline/, jobs/ or s2d_model/, print."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline import storage
from pipeline.cluster import ClusterError
from pipeline.runlock import RunFolderBusy
from pipeline.settings import IDENTITY_THRESHOLD

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


# ------------------------------------------------------------------------------------------ choices
# Written out so that `s2d --help` needs no pipeline module; tests/test_checks.py keeps each the same as its source.
Detector = Literal["retinaface-mobilenet", "retinaface-resnet50"]  # pipeline.settings.DETECTORS
Landmarks = Literal["mobilefacenet", "fan"]  # pipeline.settings.LANDMARKS
Decoder = Literal["pyav", "decord"]  # pipeline.settings.DECODERS
Device = Literal["auto", "cpu", "cuda"]
FrameOrder = Literal["time", "lexicographic"]  # pipeline.crops.FRAME_ORDERS
EvalFrameOrder = Literal["auto", "time", "lexicographic"]  # auto: the checkpoint's training order
# jobs.datasets.FORMATS (either training stage reads any of them; the help names the usual ones)
DatasetFormat = Literal["dfew", "ferv39k", "mafw", "rafdb", "affectnet7", "affectnet8", "csv"]


# ------------------------------------------------------------------------------------------ option checks
# Typer's min=/max= are inclusive bounds (it has no open ones), so "> 0" is a callback, in the words `s2d` always used
def positive(v: float | None) -> float | None:
    """Option check: > 0."""
    if v is not None and not v > 0:
        raise typer.BadParameter(f"must be > 0, not {v}")
    return v


def unit_interval(v: float) -> float:
    """Option check: in (0, 1]."""
    if not 0 < v <= 1:
        raise typer.BadParameter(f"must be in (0, 1], not {v}")
    return v


def crop_spec(v: str | None) -> str | None:
    """Option check: a crop spec (pipeline.crops), or None."""
    from pipeline.crops import parse_crop

    try:
        return None if v is None else str(parse_crop(v))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


# ------------------------------------------------------------------------------------------ shared options
CROP_HELP = ("the face crop the model takes: template[:MARGIN][@SIZE] (5-point alignment), box[:SCALE][@SIZE] "
             "(detector box, squared) or mtcnn[@SIZE] (the authors' MAFW crop) [default: what the weights were "
             "trained on; README \"Crops and frame order\"]")
SHARD_HELP = ("seconds per time shard: a longer video is split so that several face actors share it [default: 60, "
              "and no more shards than there are face actors]")
DEVICE_HELP = "auto (GPU when the cluster has one), cpu or cuda"
LANDMARK_HELP = ("MobileFaceNet file or name for S2D's landmark branch [default: mobilefacenet, looked up in "
                 "$S2D_WEIGHTS_DIR, then the cache]")

AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address (default: a local cluster)")]
VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help="show Ray's own messages too (start-up, dataset "
                                          "plans, warnings from its C++ side)")]
DeviceOpt = Annotated[Device, typer.Option(help=DEVICE_HELP)]
RunFolderArg = Annotated[str, typer.Argument(help="an `s2d annotate --out` folder (local or a URI)")]

# the face stage: faces, annotate, prepare
PathsArg = Annotated[list[str], typer.Argument(metavar="PATHS...", help="video and image files (JPEG, PNG, WebP, "
                                               "BMP) or folders (searched recursively), local or URIs "
                                               "(s3://bucket/videos/)")]
FpsOpt = Annotated[float, typer.Option(callback=positive, help="analysis rate of the face stage (frames per "
                                       "second)")]
DetectorOpt = Annotated[Detector, typer.Option(help="face detector")]
DetectorWeightsOpt = Annotated[str | None, typer.Option(envvar="S2D_DETECTOR_WEIGHTS",
                                                        help="detector weights file or name")]
LandmarksOpt = Annotated[Landmarks, typer.Option(help="face-stage 68-point landmarks")]
ScoreThresholdOpt = Annotated[float, typer.Option(callback=unit_interval, help="minimum face score")]
NmsThresholdOpt = Annotated[float, typer.Option(callback=unit_interval, help="NMS IoU threshold")]
LongSideOpt = Annotated[int, typer.Option(min=32, help="frames are resized to this long side for detection")]
DecoderOpt = Annotated[Decoder, typer.Option(help="video decoder (decord: optional, pip install "
                                             "'s2d-pipeline[decord]'; it leaks memory on long files)")]
ShardOpt = Annotated[float | None, typer.Option(callback=positive, help=SHARD_HELP)]
IdentitiesOpt = Annotated[bool, typer.Option("--identities/--no-identities", help="group each video's tracks into "
                                             "persons by face descriptors (a person_id per row); off: one person "
                                             "per track")]
IdentityWeightsOpt = Annotated[str | None, typer.Option(envvar="S2D_IDENTITY_WEIGHTS", help="face-recognition net "
                                                        "for persons: a name (faceapi-recognition) or the path of its "
                                                        "tfjs weights manifest [default: faceapi-recognition]")]
IdentityThresholdOpt = Annotated[float, typer.Option(min=0.0, max=2.0, help="tracks whose mean face descriptors "
                                                     "lie closer than this are one person (Euclidean; a new value "
                                                     "re-groups from the cache, no decode)")]

# training and evaluation
DataOpt = Annotated[str, typer.Option("--data", help="dataset root (or a CSV file for --format csv); a path or URI")]
FoldOpt = Annotated[int | None, typer.Option(min=1, max=5, help="DFEW / MAFW fold (1..5)")]
TrainLandmarkWeightsOpt = Annotated[str, typer.Option(envvar="S2D_LANDMARK_WEIGHTS", help=LANDMARK_HELP)]
RunOutOpt = Annotated[str, typer.Option("--out", help="run folder (a path or URI): checkpoints, metrics.csv/jsonl, "
                                        "best.pth, last.pth")]
ModelOpt = Annotated[str, typer.Option(help="model configuration (s2d_tiny for smoke runs)")]
EpochsOpt = Annotated[int, typer.Option(min=1, help="epochs")]
WorkersOpt = Annotated[int, typer.Option(min=1, help="training workers (processes; one GPU each with "
                                         "--gpus-per-worker 1)")]
GpusPerWorkerOpt = Annotated[float, typer.Option(min=0, help="GPUs per worker (0: train on CPU)")]
CpusPerWorkerOpt = Annotated[float, typer.Option(callback=positive, help="CPUs reserved per worker")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
ValFractionOpt = Annotated[float, typer.Option(min=0, max=0.9, help="share of the training data held out to pick "
                                               "the best epoch")]
MixupOpt = Annotated[bool | None, typer.Option("--mixup/--no-mixup", help="mixup/cutmix [default: the recipe's]")]
MaxFailuresOpt = Annotated[int, typer.Option(min=0, help="restart a failed worker group up to N times from the last "
                                             "checkpoint")]
TrustInitOpt = Annotated[bool, typer.Option(help="allow arbitrary pickled objects in the --init file")]


# ------------------------------------------------------------------------------------------ helpers
def _fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


KNOWN_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, ClusterError, storage.NoSpace,
                storage.NotWritable, RunFolderBusy)


@contextmanager
def errors(*also: type[Exception], interrupted: str | None = None) -> Iterator[None]:
    """The one place where a known error becomes one line, ``error: MESSAGE``, and exit 1: missing inputs or
    weights (s2d_model.weights.WeightsNotFound is a FileNotFoundError), bad values or datasets (jobs.datasets.
    DatasetError is a ValueError), a cluster that fails, a full disk, an output that cannot be written, a run
    folder in use; ``also``: a command's own. ``interrupted``: what a re-run does after Ctrl-C, which then ends in
    exit 130 (without it, Ctrl-C is left alone)."""
    try:
        yield
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        _fail(f"interrupted: {interrupted}", 130)
    except (*KNOWN_ERRORS, *also) as e:
        _fail(str(e))


def _ray_output(verbose: bool) -> None:
    """Before Ray starts. ``-v``: S2D_VERBOSE=1 (Ray's loggers as Ray sets them). Otherwise, in a real ``s2d``
    process, what Ray's C++ side writes to file descriptor 2 (an error-level line for every Ray Data actor pool)
    goes to /dev/null, while Python's ``sys.stderr`` (our messages, the progress bar, tracebacks) moves to a copy
    of the terminal's descriptor; Ray's log files keep everything."""
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


def _face_settings(detector: Detector, landmarks: Landmarks, decoder: Decoder, **options):
    from pipeline.settings import FaceSettings

    return FaceSettings(detector=detector, landmarks=landmarks, decoder=decoder, **options)


def _report_failures(failed: list[tuple[str, str]]) -> None:
    """(path, reason) of each failed input, a line each on stderr."""
    for path, reason in failed:
        reason = str(reason).removeprefix(f"{path}: ")  # most reasons start with the path already
        typer.echo(f"failed: {path}: {reason}", err=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s2d-pipeline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"s2d-pipeline {_version()}")
        raise typer.Exit()


# ------------------------------------------------------------------------------------------ commands
@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print the version of s2d-pipeline and exit")] = False,
) -> None:
    pass  # the group's own options only (the help is the Typer's)


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
    frames: Annotated[list[str], typer.Argument(metavar="FRAMES...", help="face crops of a data set: image files or "
                                                "folders (searched recursively), e.g. DFEW's clip_224x224_16f/")],
    sample: Annotated[int, typer.Option(min=1, help="files measured, spread over the sorted list")] = 50,
    detector_weights: Annotated[str | None, typer.Option(envvar="S2D_DETECTOR_WEIGHTS", help="RetinaFace "
                                                         "MobileNet-0.25 weights file or name")] = None,
):
    """Run our detector on a sample of a data set's face crops and print their geometry (eye distance, eye and
    mouth position, roll, aspect) and the --crop that cuts the same crop from raw video."""
    from pipeline.crop_measure import measure_crops
    from s2d_model.weights import resolve

    with errors():
        m = measure_crops(frames, resolve(detector_weights or "retinaface-mobilenet"), sample=sample)
    typer.echo(m.table())


@weights_app.command("list")
def weights_list():
    """Show the known weights, where each comes from, and whether it is on this machine."""
    from s2d_model import weights as W

    typer.echo(f"cache: {W.cache_dir()}" + (f"   ${W.ENV_DIR}: {os.environ[W.ENV_DIR]}"
                                             if os.environ.get(W.ENV_DIR) else ""))
    for spec in W.KNOWN.values():
        found = W.locate(spec.name)
        typer.echo(f"{spec.name:24s} {spec.kind:10s} {'present: ' + str(found) if found else 'missing'}")
        typer.echo(f"{'':24s} {spec.description}")
        typer.echo(f"{'':24s} source: {W.source_of(spec)}")
    for name, path in sorted(W.imported().items()):
        typer.echo(f"{name:24s} {'imported':10s} {path}")


@weights_app.command("download")
def weights_download(name: Annotated[str, typer.Argument(help="a name from `s2d weights list`")]):
    """Download known weights into the cache (resumable, sha256-checked where the checksum is known)."""
    from s2d_model import weights as W

    with errors():
        path = W.download(name)
    typer.echo(f"{name}: {path}")


@weights_app.command("import")
def weights_import(path: Annotated[Path, typer.Argument(help="a local weights file")],
                   name: Annotated[str, typer.Option("--name", help="the name to register it under")]):
    """Register a local file under a name (e.g. the authors' DFEW file under `s2d-dfew`)."""
    from s2d_model import weights as W

    with errors():
        p = W.import_file(path, name)
    typer.echo(f"registered {name} -> {p}")


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help="a known or imported name")]):
    """Print where weights NAME are, or what to download and where to put it."""
    from s2d_model import weights as W

    with errors():
        typer.echo(str(W.resolve(name)))


@app.command("faces")
def faces_cmd(
    paths: PathsArg,
    cache: Annotated[str, typer.Option("--cache", help="landmark cache folder (Parquet, one entry per video), "
                                       "local or a URI")],
    fps: Annotated[float, typer.Option(callback=positive, help="analysis rate: frames sampled per second, by "
                                       "timestamp")] = 8.0,
    detector: DetectorOpt = "retinaface-mobilenet",
    detector_weights: Annotated[str | None, typer.Option(
        envvar="S2D_DETECTOR_WEIGHTS", help="detector weights file or name (default: the detector's usual file, "
        "looked up in $S2D_WEIGHTS_DIR, then the cache)")] = None,
    landmarks: LandmarksOpt = "mobilefacenet",
    landmark_weights: Annotated[str | None, typer.Option(
        envvar="S2D_LANDMARK_WEIGHTS", help="landmark weights file or name (default: the backend's usual "
        "file)")] = None,
    score_threshold: ScoreThresholdOpt = 0.6,
    nms_threshold: NmsThresholdOpt = 0.4,
    long_side: LongSideOpt = 640,
    decoder: DecoderOpt = "pyav",
    shard: ShardOpt = None,
    identities: IdentitiesOpt = True,
    identity_weights: IdentityWeightsOpt = None,
    identity_threshold: IdentityThresholdOpt = IDENTITY_THRESHOLD,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    device: DeviceOpt = "auto",
):
    """Find, landmark and track every face in every video, and group each video's tracks into persons; write the
    Parquet landmark cache."""
    _ray_output(verbose)
    from pipeline.faces_run import run_faces

    settings = _face_settings(detector, landmarks, decoder, fps=fps, detector_weights=detector_weights,
                              landmark_weights=landmark_weights, score_threshold=score_threshold,
                              nms_threshold=nms_threshold, long_side=long_side, shard_s=shard,
                              identities=identities, identity_weights=identity_weights,
                              identity_threshold=identity_threshold)
    with errors():
        result = run_faces([str(p) for p in paths], cache, settings, device=device, address=address)
    _report_failures([(v["source_path"], v["error"]) for v in result.videos if v["status"] == "error"])
    typer.echo(result.summary())
    typer.echo(f"cache: {storage.join(cache, 'faces', result.settings_hash)}")
    if result.interrupted:
        _fail("interrupted: the videos not done have no cache entry yet; run again to finish", 130)
    if result.count("error") == len(result.videos):
        _fail(f"every input failed ({len(result.videos)} of {len(result.videos)})")


# `s2d annotate`'s own
AnnotateOutOpt = Annotated[str, typer.Option("--out", help="output folder: one timeline Parquet per video or image + "
                                             "manifest.json; local or a URI (s3://bucket/run/)")]
WeightsOpt = Annotated[str, typer.Option(envvar="S2D_WEIGHTS", help="S2D weights: a name from `s2d weights list`, a "
                                         "file, faceapi-expression (face-api's per-frame expression net, or a path "
                                         "to its weights manifest), or random-tiny (untrained, smoke tests only)")]
ImageWeightsOpt = Annotated[str, typer.Option(envvar="S2D_IMAGE_WEIGHTS", help="still images: S2D's static image "
                                              "model (the first training stage): a name, a file, faceapi-expression, "
                                              "or random-tiny; needed only when there are images")]
AnnotateFrameOrderOpt = Annotated[FrameOrder | None, typer.Option(
    help="the order of a clip's 16 frames as S2D sees them: time, or lexicographic (frames named 1..16 sorted by "
    "name: 1, 10-16, 2-9, as s2d-dfew was trained) [default: the weights' training order]")]
ViewsOpt = Annotated[int, typer.Option(min=1, max=2, help="2: test-time views, a window's first and last 16 sampled "
                                       "frames with their probabilities averaged (the authors' protocol), where the "
                                       "window holds more than 16 (e.g. --segment 4 at --fps 8)")]
AnnotateBatchSizeOpt = Annotated[int | None, typer.Option(min=1, help="clips per S2D forward pass [default: 8 on a "
                                                          "GPU, 1 on CPU, where one clip at a time is fastest]")]
PrecisionOpt = Annotated[Literal["auto", "fp32", "bf16", "int8"], typer.Option(
    help="how S2D runs: fp32, bf16 (autocast; the frozen landmark branch stays fp32 on a CPU), or int8 (CPU only: "
    "the ViT's Linear layers dynamically quantised; ~2x faster, logits within a few %); auto: bf16 on a GPU "
    "and on a CPU with native bf16 (avx512_bf16 or amx_bf16) for the full-size model, else fp32 (README "
    "\"Precision\")")]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="write OUT/report.html at the end (see `s2d "
                                         "report`)")]
OverlayOpt = Annotated[bool, typer.Option("--overlay", help="also write an overlay video per video with faces into "
                                          "OUT/overlays/ (see `s2d overlay`)")]
S2DLandmarkWeightsOpt = Annotated[str | None, typer.Option(envvar="S2D_LANDMARK_WEIGHTS", help="MobileFaceNet file "
                                                           "(face stage and S2D's landmark branch); with --landmarks "
                                                           "fan, the FAN file")]
TrustWeightsOpt = Annotated[bool, typer.Option("--trust", help="load a --weights file that holds pickled Python code "
                                               "(only a file you made or trust: loading it runs that code)")]


@app.command("annotate")
def annotate_cmd(
    paths: PathsArg,
    out: AnnotateOutOpt,
    weights: WeightsOpt = "s2d-dfew",
    image_weights: ImageWeightsOpt = "s2d-affectnet7-image",
    crop: Annotated[str | None, typer.Option(callback=crop_spec, help=CROP_HELP)] = None,
    image_crop: Annotated[str | None, typer.Option(callback=crop_spec, help="the same for the image model")] = None,
    frame_order: AnnotateFrameOrderOpt = None,
    labels: Annotated[str | None, typer.Option(help="label set (dfew, ferv39k, mafw, ...) or class names a,b,c; "
                                               "default: the weights'")] = None,
    segment: Annotated[float, typer.Option(callback=positive, help="segment length in seconds")] = 2.0,
    stride: Annotated[float, typer.Option(callback=positive, help="seconds between segment starts")] = 1.0,
    min_face_frames: Annotated[int, typer.Option(min=1, max=16, help="skip a segment whose face is in fewer of its "
                                                 "16 frames")] = 8,
    views: ViewsOpt = 1,
    batch_size: AnnotateBatchSizeOpt = None,
    precision: PrecisionOpt = "auto",
    cache: Annotated[str | None, typer.Option("--cache", help="landmark cache folder, local or a URI [default: "
                                              "OUT/cache]")] = None,
    force: Annotated[bool, typer.Option("--force", help="redo videos whose timeline already exists (their faces "
                                        "still come from a complete cache entry: --cache NEWDIR detects them "
                                        "again)")] = False,
    report: ReportOpt = True,
    overlay: OverlayOpt = False,
    fps: FpsOpt = 8.0,
    detector: DetectorOpt = "retinaface-mobilenet",
    detector_weights: DetectorWeightsOpt = None,
    landmarks: LandmarksOpt = "mobilefacenet",
    landmark_weights: S2DLandmarkWeightsOpt = None,
    score_threshold: ScoreThresholdOpt = 0.6,
    nms_threshold: NmsThresholdOpt = 0.4,
    long_side: LongSideOpt = 640,
    decoder: DecoderOpt = "pyav",
    shard: ShardOpt = None,
    identities: IdentitiesOpt = True,
    identity_weights: IdentityWeightsOpt = None,
    identity_threshold: IdentityThresholdOpt = IDENTITY_THRESHOLD,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    device: DeviceOpt = "auto",
    trust: TrustWeightsOpt = False,
):
    """Write a per-track, per-segment emotion timeline (Parquet) for every face in every video, and the faces of
    every still image (one row each). One run at a time per --out folder: a second stops, naming the first."""
    _ray_output(verbose)
    from pipeline.annotate_run import run_annotate
    from pipeline.settings import AnnotateSettings

    face_settings = _face_settings(detector, landmarks, decoder, fps=fps, detector_weights=detector_weights,
                                   landmark_weights=landmark_weights, score_threshold=score_threshold,
                                   nms_threshold=nms_threshold, long_side=long_side, shard_s=shard,
                                   identities=identities, identity_weights=identity_weights,
                                   identity_threshold=identity_threshold)
    settings = AnnotateSettings(weights=weights, image_weights=image_weights, labels=labels,
                                s2d_landmark_weights=landmark_weights if landmarks == "mobilefacenet" else None,
                                segment_s=segment, stride_s=stride, min_face_frames=min_face_frames, views=views,
                                batch_size=batch_size, crop=crop, image_crop=image_crop,
                                frame_order=frame_order, precision=precision)
    if weights == "random-tiny":
        from pipeline.classifier import UNTRAINED_WARNING

        typer.echo(f"WARNING: {UNTRAINED_WARNING}", err=True)
    with errors():
        result = run_annotate([str(p) for p in paths], out, cache, face_settings, settings, device=device,
                              address=address, force=force, trust=trust, report=report, overlay=overlay)
    _print_annotated(result, out, overlay)


def _print_annotated(result, out: str, overlay: bool) -> None:
    """`s2d annotate`'s account of a run: failures, counts, where things are; exit 130 or 1 where it must."""
    _report_failures([(r.video_path, r.error) for r in result.records if r.status == "error"])
    typer.echo(result.summary())
    typer.echo(f"timelines: {out}  (manifest: {storage.join(out, 'manifest.json')}; summary: s2d timeline {out})")
    for r in result.records:
        if r.overlay_error:
            typer.echo(f"failed: {r.video_path}: {r.overlay_error}", err=True)
    if overlay:
        typer.echo(f"overlays: {sum(bool(r.overlay) for r in result.records)} in {storage.join(out, 'overlays')}")
    if result.report:
        typer.echo(f"report: {result.report}")
    elif result.report_error:
        typer.echo(f"failed: {result.report_error}", err=True)
    if result.interrupted:
        _fail("interrupted: the videos not done are marked 'interrupted' in the manifest; run again to finish", 130)
    if result.warning:
        typer.echo(f"WARNING: {result.warning}", err=True)
    if result.count("error") == len(result.records):
        _fail(f"every input failed ({len(result.records)} of {len(result.records)})")


@app.command("timeline")
def timeline_cmd(
    out: RunFolderArg,
    plot: Annotated[Path | None, typer.Option("--plot", help="also draw the timelines to this PNG file: one panel "
                                              "per person over the whole video, untrained weights flagged")] = None,
    video: Annotated[str | None, typer.Option(help="only this video (file name or video_id)")] = None,
):
    """Summarise a run's timelines (those its manifest.json lists; a file that cannot be read is named on stderr):
    per video and person (its tracks together), the dominant emotion and the share of time per emotion."""
    import warnings

    from pipeline.summary import format_summary, summarize
    from pipeline.timeline import by_label_set, finished_timelines, read_timeline_files

    with errors(), warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        paths = finished_timelines(out)  # the manifest read once
    for w in skipped:
        typer.echo(f"skipped: {w.message}", err=True)
    df = read_timeline_files(paths)
    if video is not None:
        df = df[(df.video_id == video) | (df.video_path.map(storage.name) == video)]
    if df.empty:
        _fail(f"no timeline rows in {out}" + (f" for {video}" if video else ""))
    groups = by_label_set(paths, df)  # videos and images may be labelled with different label sets
    for labels, rows in groups:
        if len(groups) > 1:
            typer.echo(f"label set: {', '.join(labels)}")
        typer.echo(format_summary(summarize(rows, labels)))
    if plot is not None:
        _plot_timelines(out, df, groups, plot)


def _plot_timelines(out: str, df, groups, plot: Path) -> None:
    """`s2d timeline --plot`: the first label set's moving videos (still images have no time axis)."""
    from pipeline.classifier import UNTRAINED_WARNING
    from pipeline.summary import plot_timeline
    from pipeline.timeline import read_manifest

    moving = df.groupby("video_id")["end_s"].transform("max") > 0
    labels, df = next(((labels, rows[moving[rows.index]]) for labels, rows in groups if moving[rows.index].any()),
                      ([], None))
    if df is None:
        _fail(f"no video timelines to plot in {out} (still images have no time axis)")
    try:
        m = read_manifest(out)
    except FileNotFoundError:  # timeline files alone (copied out of their run): no durations, no warning
        m = {}
    warning = m.get("warning") or (UNTRAINED_WARNING if (df["model"] == "random-tiny").any() else None)
    plot_timeline(df, labels, plot, durations={v["video_id"]: v.get("duration_s") for v in m.get("videos", [])},
                  warning=warning)
    typer.echo(f"plot: {plot}")


@app.command("people")
def people_cmd(
    out: RunFolderArg,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="persons whose mean face descriptors "
                                                    "lie closer than this are one (Euclidean) [default: the run's "
                                                    "--identity-threshold]")] = None,
):
    """Link the persons of a run's videos and images into people across them (by face descriptors, from the
    landmark cache; no model runs): OUT/people.parquet, and one line per person."""
    from pipeline.people_link import read_people, write_people

    with errors():
        path = write_people(out, threshold)
    found = read_people(out)
    if found.empty:
        typer.echo("no persons in the run")
    for gid, rows in found.groupby("global_person_id", sort=True):
        seen = ", ".join(f"{storage.name(p)} p{pid}" for p, pid in zip(rows.video_path, rows.person_id))
        typer.echo(f"person {gid}: {len(rows)} file{'s' if len(rows) > 1 else ''} ({seen})")
    typer.echo(f"people: {path}")


@app.command("overlay")
def overlay_cmd(
    out: RunFolderArg,
    video: Annotated[str, typer.Argument(help="a video of that run: its file name, path or video_id")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="the MP4 file to write (local or a URI; a "
                                               "folder gets the default name in it) [default: "
                                               "OUT/overlays/<stem>.<video_id>.overlay.mp4]")] = None,
):
    """Draw the run's face boxes, persons and emotions onto a video: H.264 MP4 at the video's own frame rate and
    size, its audio copied. Reads only the landmark cache and the timeline (no model runs)."""
    from pipeline.decode import DecodeError
    from pipeline.overlay import write_overlay

    with errors(DecodeError, OSError):
        path = write_overlay(out, video, output)
    typer.echo(f"overlay: {path}")


@app.command("report")
def report_cmd(
    out: RunFolderArg,
    output: Annotated[str | None, typer.Option("-o", "--output", help="where to write the page, a path or URI "
                                               "[default: OUT/report.html]")] = None,
):
    """Write one self-contained HTML page of a run (no network: opens from disk in any browser): settings,
    errors, and per person a face thumbnail, its emotion timeline over the whole video and the share per emotion;
    the run's people across videos when OUT/people.parquet is there."""
    from pipeline.report import write_report

    with errors():
        path = write_report(out, output)
    typer.echo(f"report: {path}")


# ------------------------------------------------------------------------------------------ training jobs
def _train(stage: str, data: str, format: DatasetFormat, out: str, **options) -> None:
    from jobs.train import train_dynamic, train_static

    options = {k: v for k, v in options.items() if v is not None}
    with errors():
        summary = (train_static if stage == "static" else train_dynamic)(data, format, out, **options)
    best = summary.get("best_metrics") or {}
    score = (f" (val UAR {100 * best['val_uar']:.2f}, WAR {100 * best['val_war']:.2f}, epoch {best['epoch'] + 1})"
             if best.get("val_uar") is not None else "")
    typer.echo(f"best checkpoint: {summary['best_checkpoint']}{score}")
    typer.echo(f"last checkpoint: {summary['last_checkpoint']}")
    typer.echo(f"metrics: {summary['metrics_csv']}")


@train_app.command("static")
def train_static_cmd(
    data: DataOpt,
    format: Annotated[DatasetFormat, typer.Option("--format", case_sensitive=False,
                                                  help="rafdb | affectnet7 | affectnet8 | csv")],
    out: RunOutOpt,
    labels: Annotated[str | None, typer.Option(help="csv format: a label set (rafdb, dfew, ...) or class names "
                                               "a,b,c")] = None,
    model: ModelOpt = "s2d_base_patch16_224",
    init: Annotated[str | None, typer.Option(help="start from this checkpoint (MAE/ViT or the authors' image "
                                             "model)")] = None,
    epochs: EpochsOpt = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="samples per worker and step")] = 8,
    lr: Annotated[float | None, typer.Option(callback=positive, help="base lr per 8 samples, scaled by the total "
                                             "batch [default 2.5e-6]")] = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    seed: SeedOpt = 0,
    val_fraction: ValFractionOpt = 0.1,
    mixup: MixupOpt = None,
    max_failures: MaxFailuresOpt = 0,
    landmark_weights: TrainLandmarkWeightsOpt = "mobilefacenet",
    trust: TrustInitOpt = False,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
):
    """Train the static image model (S2DImage) on RAF-DB / AffectNet-style data. Re-running resumes."""
    _ray_output(verbose)
    _train("static", data, format, out, labels=labels, model=model, init=init, epochs=epochs, batch_size=batch_size,
           lr=lr, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, seed=seed,
           val_fraction=val_fraction, mixup=mixup, max_failures=max_failures, landmark_weights=landmark_weights,
           trust=trust, address=address)


@train_app.command("dynamic")
def train_dynamic_cmd(
    data: DataOpt,
    format: Annotated[DatasetFormat, typer.Option("--format", case_sensitive=False,
                                                  help="dfew | ferv39k | mafw | csv")],
    out: RunOutOpt,
    fold: FoldOpt = None,
    labels: Annotated[str | None, typer.Option(help="csv format: a label set (dfew, ...) or class names "
                                               "a,b,c")] = None,
    init: Annotated[str | None, typer.Option(help="static checkpoint to start from (e.g. s2d-affectnet7-image or a "
                                             "`s2d train static` best.pth); without it: random init, with a "
                                             "warning")] = None,
    model: ModelOpt = "s2d_base_patch16_224",
    epochs: EpochsOpt = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="clips per worker and step")] = 8,
    lr: Annotated[float | None, typer.Option(callback=positive, help="base lr per 8 clips, scaled by the total "
                                             "batch [default 1e-5]")] = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0,
    cpus_per_worker: CpusPerWorkerOpt = 1,
    seed: SeedOpt = 0,
    oversample: Annotated[bool, typer.Option(help="draw classes near-uniformly every epoch")] = False,
    sdl: Annotated[bool, typer.Option(help="emotion-anchor self-distillation loss")] = False,
    frame_order: Annotated[FrameOrder, typer.Option(help="time | lexicographic: how a frame folder's files are "
                                                    "ordered (lexicographic: 1, 10..16, 2..9 by name, as the "
                                                    "authors trained s2d-dfew); recorded in the "
                                                    "checkpoint")] = "time",
    val_fraction: ValFractionOpt = 0.1,
    mixup: MixupOpt = None,
    max_failures: MaxFailuresOpt = 0,
    landmark_weights: TrainLandmarkWeightsOpt = "mobilefacenet",
    trust: TrustInitOpt = False,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
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
    data: DataOpt,
    format: Annotated[DatasetFormat, typer.Option("--format", case_sensitive=False, help="dfew | ferv39k | mafw | "
                                                  "rafdb | affectnet7 | affectnet8 | csv")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="a checkpoint file (a path or URI) or weights name "
                                            "(ours or the authors')")],
    out: Annotated[str | None, typer.Option("--out", help="results folder, a path or URI [default: "
                                            "eval/<checkpoint>-<format>-<split>]")] = None,
    fold: FoldOpt = None,
    split: Annotated[str, typer.Option(help="which split to evaluate")] = "test",
    labels: Annotated[str | None, typer.Option(help="csv format: a label set or class names a,b,c")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="clips per forward pass")] = 8,
    workers: Annotated[int, typer.Option(min=1, help="model actors")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(min=0, help="GPUs per actor")] = 0,
    landmark_weights: TrainLandmarkWeightsOpt = "mobilefacenet",
    trust: Annotated[bool, typer.Option(help="allow arbitrary pickled objects in the checkpoint")] = False,
    precision: PrecisionOpt = "auto",
    frame_order: Annotated[EvalFrameOrder, typer.Option(
        help="auto | time | lexicographic: how a frame folder's files are ordered; auto: the checkpoint's training "
        "order (s2d-dfew: lexicographic, the authors' protocol; ours: as recorded; else time)")] = "auto",
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
):
    """Evaluate a checkpoint on a dataset split: UAR, WAR, per-class recall, F1, confusion matrix.

    The authors' protocol: two temporal views per clip (first and last 16 frames), softmax averaged. Writes
    metrics.json, confusion.csv, confusion.png and predictions.csv to --out.
    """
    _ray_output(verbose)
    from jobs.evaluate import evaluate

    fmt = format
    out = out or Path("eval") / f"{Path(checkpoint).stem}-{fmt}-{split}{'' if fold is None else f'-fold{fold}'}"
    with errors():
        m = evaluate(data, fmt, checkpoint, out, fold=fold, batch_size=batch_size, landmark_weights=landmark_weights,
                     address=address, split=split, labels=labels, workers=workers, gpus_per_worker=gpus_per_worker,
                     trust=trust, frame_order=frame_order, precision=precision)
    names = json.loads(storage.read_text(m["outputs"]["metrics"]))["labels"]
    typer.echo("recall per class: " + ", ".join(f"{n} -" if r is None or r != r else f"{n} {100 * r:.1f}"
                                               for n, r in zip(names, m["recall"])))  # -: not in the split
    typer.echo(f"results: {', '.join(m['outputs'].values())}")


@app.command("prepare")
def prepare_cmd(
    videos_csv: Annotated[str, typer.Argument(help="CSV with path,label[,split] (paths relative to the CSV's "
                                              "folder); a path or URI")],
    out: Annotated[str, typer.Option("--out", help="dataset folder (a path or URI): clips/<name>/00001..00016.jpg, "
                                     "train/val/test.csv")],
    labels: Annotated[str | None, typer.Option(help="check labels against a label set (dfew, ...) or names "
                                               "a,b,c")] = None,
    force: Annotated[bool, typer.Option("--force", help="re-cut clips that already exist")] = False,
    crop: Annotated[str, typer.Option(help="the face crop of every frame: template[:MARGIN][@SIZE], "
                                      "box[:SCALE][@SIZE] or mtcnn[@SIZE] (pipeline/crops.py); recorded in clip.json "
                                      "and dataset.json (training stores it in the checkpoint); a clip cut otherwise "
                                      "is redone")] = "template:0.25@224",
    fps: FpsOpt = 8.0,
    detector: DetectorOpt = "retinaface-mobilenet",
    detector_weights: DetectorWeightsOpt = None,
    landmarks: LandmarksOpt = "mobilefacenet",
    landmark_weights: Annotated[str | None, typer.Option(envvar="S2D_LANDMARK_WEIGHTS",
                                                         help="landmark weights file or name")] = None,
    decoder: DecoderOpt = "pyav",
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    device: DeviceOpt = "auto",
):
    """Turn labelled raw videos into a DFEW-style clip dataset for training.

    Per video: the face stage, its longest face track, 16 frames spread over it, cut with --crop (by default
    aligned to 224 px as `s2d annotate` aligns them). `s2d train dynamic --format csv` and `s2d evaluate --format csv` read the result.
    """
    _ray_output(verbose)
    from jobs.prepare import prepare

    faces = _face_settings(detector, landmarks, decoder, fps=fps, detector_weights=detector_weights,
                           landmark_weights=landmark_weights, identities=False)  # a clip per video: no persons
    with errors(interrupted="the face cache under OUT/cache keeps the videos done; run again to finish"):
        m = prepare(videos_csv, out, faces, labels=labels, device=device, address=address, force=force,
                    crop=crop)
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
