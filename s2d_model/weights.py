"""Weights: names -> sources, the cache directory, and offline messages. The only place that knows a URL.

Resolution order for ``resolve(name_or_path)``:
1. an existing file path is used as is;
2. a file registered with ``s2d weights import`` (``<cache>/registry.json``);
3. ``$S2D_WEIGHTS_DIR/<usual file name>`` (set it once for CI and offline machines);
4. ``<cache>/<name>/<usual file name>`` (where ``s2d weights download`` puts files).
A URI of a filesystem pyarrow knows (``s3://bucket/run/best.pth``: a checkpoint a training run wrote to an object
store) is copied into ``<cache>/remote/`` by the process that resolves it. Otherwise nothing is downloaded
implicitly: a missing file raises ``WeightsNotFound`` with the exact file to fetch
and where to put it. ``download`` is the explicit, resumable, sha256-checked fetch.

Cache directory: ``$S2D_HOME`` if set, else ``$HF_HOME/s2d`` if set, else ``~/.cache/s2d``.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write, sha256_file

HF_REPO = "cyinen/S2D"


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    kind: str  # "s2d-video" | "s2d-image" | "expression" | "identity" | "landmark" | "detector"
    filename: str  # the usual file name (also what $S2D_WEIGHTS_DIR is searched for)
    description: str
    url: str | None = None  # plain HTTPS download
    hf_repo: str | None = None  # Hugging Face repo ...
    hf_pattern: str | None = None  # ... and the file in it (a glob: the released names vary by fold)
    sha256: str | None = None
    labels: str | None = None  # label set of a classifier
    config: str | None = None  # model configuration name
    crop: str | None = None  # a classifier's input crop (pipeline.crops syntax): what it was trained on
    frame_order: str | None = None  # a video classifier's frame order: "time" or "lexicographic"
    also: tuple = ()  # (filename, url, sha256) of files that must lie beside ``filename`` (a tfjs weights binary)


FACEAPI = "https://raw.githubusercontent.com/vladmandic/face-api/ad61f77ea2962809bed52b5b18966fea80ab1273/model/"


def _finetuned(dataset: str, labels: str, pattern: str, crop: str, order: str) -> WeightsSpec:
    return WeightsSpec(
        name=f"s2d-{dataset}", kind="s2d-video", filename=f"s2d_{dataset}.pth", labels=labels,
        config="s2d_base_patch16_224", hf_repo=HF_REPO, hf_pattern=pattern, crop=crop, frame_order=order,
        description=f"Authors' S2D fine-tuned on {dataset.upper()} (no oversampling), {{'model': ...}} format")


KNOWN: dict[str, WeightsSpec] = {s.name: s for s in [
    # crops and frame orders: S2D_REFERENCE.md section 7 (README "Crops" says how sure each is)
    _finetuned("dfew", "dfew", "*DFEW*", "template:0@224", "lexicographic"),
    _finetuned("ferv39k", "ferv39k", "*FERV39K*", "template:0@224", "time"),
    _finetuned("mafw", "mafw", "*MAFW*", "mtcnn@224", "time"),
    WeightsSpec(
        name="s2d-affectnet7-image", kind="s2d-image", filename="pretrain-AffectNet-7.pth", labels="affectnet7",
        config="s2d_base_patch16_224", hf_repo=HF_REPO, hf_pattern="pretrain-AffectNet-7.pth", crop="template:0@224",
        description="Authors' static image model (AffectNet-7), {'model_state_dict': ...}: init for the dynamic stage"),
    WeightsSpec(
        name="faceapi-expression", kind="expression", filename="face_expression_model-weights_manifest.json",
        url=FACEAPI + "face_expression_model-weights_manifest.json", labels="dfew", crop="box:1.1@112",
        sha256="5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8",
        also=(("face_expression_model.bin", FACEAPI + "face_expression_model.bin",
               "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d"),),
        description="face-api's expression net (vladmandic/face-api, MIT): per-frame, 7 classes, tfjs manifest + .bin"),
    WeightsSpec(
        name="faceapi-recognition", kind="identity", filename="face_recognition_model-weights_manifest.json",
        url=FACEAPI + "face_recognition_model-weights_manifest.json",
        sha256="cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
        also=(("face_recognition_model.bin", FACEAPI + "face_recognition_model.bin",
               "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589"),),
        description="face-api's face-recognition net (dlib's ResNet; vladmandic/face-api, MIT): 128-d face "
                    "descriptors, Euclidean distance, tfjs manifest + .bin"),
    WeightsSpec(
        name="mobilefacenet", kind="landmark", filename="mobilefacenet_model_best.pth.tar",
        url="https://github.com/MSA-LMC/S2D/raw/main/landmark/mobilefacenet_model_best.pth.tar",
        description="MobileFaceNet 68-point landmarks (S2D's frozen landmark branch; face-stage landmarks)"),
    WeightsSpec(
        name="retinaface-mobilenet", kind="detector", filename="mobilenet0.25_Final.pth",
        url="https://github.com/cunjian/pytorch_face_landmark/raw/master/Retinaface/weights/mobilenet0.25_Final.pth",
        sha256="5f88f7957d9eaef82b49b9e0202bc56e97292e2aede2999209accd34442cc4df",
        description="RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface release); default detector"),
    WeightsSpec(
        name="retinaface-resnet50", kind="detector", filename="Resnet50_Final.pth",
        url="https://github.com/cunjian/pytorch_face_landmark/raw/master/Retinaface/weights/Resnet50_Final.pth",
        description="RetinaFace ResNet-50 (biubug6/Pytorch_Retinaface release); accurate detector"),
]}

ENV_DIR = "S2D_WEIGHTS_DIR"


class WeightsNotFound(FileNotFoundError):
    pass


def cache_dir() -> Path:
    if os.environ.get("S2D_HOME"):
        return Path(os.environ["S2D_HOME"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "s2d"
    return Path("~/.cache/s2d").expanduser()


def _registry_path() -> Path:
    return cache_dir() / "registry.json"


def imported() -> dict[str, str]:
    p = _registry_path()
    return json.loads(p.read_text()) if p.exists() else {}


def cached_path(spec: WeightsSpec) -> Path:
    return cache_dir() / spec.name / spec.filename


def locate(name: str) -> Path | None:
    """Where the weights ``name`` (a known or imported name, or a path) are on disk, or None."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    reg = imported()
    if name in reg and Path(reg[name]).is_file():
        return Path(reg[name])
    spec = KNOWN.get(name)
    if spec is None:
        return None
    if os.environ.get(ENV_DIR):
        p = Path(os.environ[ENV_DIR]).expanduser() / spec.filename
        if p.is_file():
            return p
    p = cached_path(spec)
    return p if p.is_file() else None


def fetch_uri(uri: str) -> Path:
    """A checkpoint on a filesystem pyarrow knows (``s3://bucket/run/best.pth``), copied once into this machine's
    cache (``cache_dir()/remote/``) and copied again when the object's size or time changes. -> the local copy."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except Exception as exc:  # an unknown scheme, no credentials, the server unreachable ...
        raise WeightsNotFound(f"weights file {uri} cannot be read: {exc}") from None
    if info.type != pafs.FileType.File:
        raise WeightsNotFound(f"weights file not found: {uri}")
    folder = cache_dir() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    local, stamp = folder / uri.rstrip("/").rsplit("/", 1)[-1], {"uri": uri, "size": info.size,
                                                               "mtime": str(info.mtime)}
    try:
        if json.loads((folder / "source.json").read_text()) == stamp and local.is_file():
            return local
    except (OSError, ValueError):
        pass
    with fs.open_input_stream(path) as src:
        atomic_write(local, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    atomic_write(folder / "source.json", json.dumps(stamp))
    return local


def resolve(name: str) -> Path:
    """A path for ``name`` or a ``WeightsNotFound`` that says exactly which file to get and where to put it.
    A URI (``s3://...``) is fetched into the cache (``fetch_uri``)."""
    if "://" in str(name):
        return fetch_uri(str(name))
    found = locate(name)
    if found is not None:
        return found
    spec = KNOWN.get(name)
    if spec is None:
        if os.sep in name or name.endswith((".pth", ".tar", ".pt", ".bin", ".zip", ".safetensors")):
            raise WeightsNotFound(f"weights file not found: {name}")
        raise WeightsNotFound(
            f"unknown weights '{name}': known names are {', '.join(sorted(KNOWN))}"
            + (f"; imported: {', '.join(sorted(imported()))}" if imported() else "")
            + "; or pass a path to a file")
    raise WeightsNotFound(missing_message(spec))


def resolve_all(names: list[str | None]) -> list[Path | None]:
    """``resolve`` for each name (None stays None), or one WeightsNotFound that names every missing file."""
    found, missing = [], []
    for name in names:
        try:
            found.append(None if name is None else resolve(name))
        except WeightsNotFound as e:
            missing.append(str(e))
    if len(missing) == 1:
        raise WeightsNotFound(missing[0])
    if missing:
        raise WeightsNotFound(f"{len(missing)} weights files are missing:\n" +
                              "\n".join(f"{i + 1}. {m}" for i, m in enumerate(missing)))
    return found


def source_of(spec: WeightsSpec) -> str:
    if spec.url:
        return spec.url
    return f"https://huggingface.co/{spec.hf_repo} (file matching '{spec.hf_pattern}')"


def missing_message(spec: WeightsSpec) -> str:
    env = os.environ.get(ENV_DIR)
    beside = "".join(f"\n  and:   {url} (beside it, as {filename})" for filename, url, _ in spec.also)
    return (
        f"weights '{spec.name}' ({spec.description}) are not on this machine.\n"
        f"  get:   {source_of(spec)}{beside}\n"
        f"  then either run `s2d weights download {spec.name}` (needs network), or put the file at\n"
        f"         {cached_path(spec)}\n"
        f"  or in  ${ENV_DIR}/{spec.filename}" + (f" (now {env})" if env else " (set the variable to a folder)") + "\n"
        f"  or pass the path directly, or register it with `s2d weights import PATH --name {spec.name}`.")


def import_file(path: str | Path, name: str) -> Path:
    """Register a local file under ``name`` (kept where it is; the registry stores its absolute path)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise WeightsNotFound(f"cannot import {path}: no such file")
    reg = imported()
    reg[name] = str(p)
    atomic_write(_registry_path(), json.dumps(reg, indent=1, sort_keys=True))
    return p


def _http_download(url: str, dest: Path, progress: bool = True) -> None:
    """Resumable HTTP(S) download into ``dest`` through ``dest.part`` (Range requests)."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        if have and r.status != 206:  # server ignored the range: start over
            have = 0
        total = int(r.headers.get("Content-Length") or 0) + have
        from tqdm import tqdm

        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total or None, initial=have, unit="B", unit_scale=True, disable=not progress,
                desc=dest.name) as bar:
            while block := r.read(1 << 20):
                f.write(block)
                bar.update(len(block))
    os.replace(part, dest)


def _hf_download(spec: WeightsSpec, dest: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    files = HfApi().list_repo_files(spec.hf_repo)
    matches = [f for f in files if fnmatch.fnmatch(f, spec.hf_pattern)]
    if len(matches) != 1:
        raise WeightsNotFound(
            f"{spec.hf_repo}: expected one file matching '{spec.hf_pattern}', found {matches or 'none'} "
            f"among {files}; download the right one by hand and use `s2d weights import PATH --name {spec.name}`")
    got = hf_hub_download(spec.hf_repo, matches[0], cache_dir=str(cache_dir() / "hf"))
    with open(got, "rb") as src:
        atomic_write(dest, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def download(name: str, progress: bool = True) -> Path:
    """Fetch known weights into the cache (resumable; sha256-checked where the checksum is known), with the files
    that lie beside them (a tfjs manifest's binary)."""
    if name not in KNOWN:
        raise WeightsNotFound(f"unknown weights '{name}': known names are {', '.join(sorted(KNOWN))}")
    spec = KNOWN[name]
    dest = cached_path(spec)
    for filename, url, sha256 in ((spec.filename, spec.url, spec.sha256), *spec.also):
        _fetch(spec, dest.with_name(filename), url, sha256, progress)
    return dest


def _fetch(spec: WeightsSpec, dest: Path, url: str | None, sha256: str | None, progress: bool) -> None:
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if url:
            _http_download(url, dest, progress)
        else:
            _hf_download(spec, dest)
    except WeightsNotFound:
        raise
    except Exception as e:  # network, HTTP or hub errors: say what failed and what to do instead
        raise WeightsNotFound(f"download of '{spec.name}' failed ({dest.name}: {type(e).__name__}: {e}).\n"
                              f"{missing_message(spec)}") from e
    if sha256 and (got := sha256_file(dest)) != sha256:
        bad = dest.with_name(dest.name + ".bad")
        os.replace(dest, bad)
        raise WeightsNotFound(f"{spec.name}: {dest.name}: sha256 mismatch (got {got}, expected {sha256}); kept as {bad}")
