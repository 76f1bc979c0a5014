"""Shared test fixtures. Real data lives in ../shared/fixtures (beside the clone); S2D_FIXTURES overrides."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))

# Ray Train's controller checks on its workers every 2 s by default, and every training run here waits on it when
# it starts and when it ends (~3 s a run, measured). Here it checks every 0.5 s: the tests, the Ray they start and
# the commands they run inherit it (Ray Train passes it from the driver to its controller and workers).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Persons (identities on by default) need face-api's recognition net: the fixtures' copy, for every run a test starts
os.environ.setdefault("S2D_IDENTITY_WEIGHTS",
                      str(FIXTURES / "weights" / "face-api" / "face_recognition_model-weights_manifest.json"))


def pytest_collection_modifyitems(items):
    """The tests on the shared local Ray cluster are marked ``ray``, as are, by hand, those that start Ray in a
    command or nodes of their own: ``pytest -m "not ray and not slow"`` is the quick loop."""
    for item in items:
        if "_ray_session" in item.fixturenames:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"test fixtures not found at {FIXTURES}: clone next to shared/ or set S2D_FIXTURES")
    return FIXTURES


@pytest.fixture(scope="session")
def expectations(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "expectations.json").read_text())


@pytest.fixture(scope="session")
def detector_weights(fixtures_dir) -> Path:
    return fixtures_dir / "weights" / "mobilenet0.25_Final.pth"


@pytest.fixture(scope="session")
def landmark_weights(fixtures_dir) -> Path:
    return fixtures_dir / "weights" / "mobilefacenet_68pt.pth.tar"


@pytest.fixture(scope="session")
def face_settings(detector_weights, landmark_weights):
    """The face stage with the fixture detector and landmark weights (identities on, the fixtures' net)."""
    from pipeline.settings import FaceSettings

    return FaceSettings(detector_weights=str(detector_weights), landmark_weights=str(landmark_weights))


def ensure_ray(num_cpus: int):
    """The real local Ray with ``num_cpus`` logical CPUs: started once, restarted only if a test module needs
    another size (the training jobs want 4 logical CPUs: 2 workers plus Ray Data decode tasks)."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("CPU") == num_cpus:
        return ray
    ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


@pytest.fixture(scope="session")
def _ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """One real local Ray cluster (2 CPUs, like CI), shared by the tests that use it."""
    return ensure_ray(2)


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server on 127.0.0.1 (tests/s3server.py), its client settings in os.environ for the
    session (nothing else here talks to S3)."""
    from s3server import S3Server, restore, set_env

    server = S3Server().start()
    old = set_env(server.env)
    try:
        yield server
    finally:
        restore(old)
        server.stop()


IMAGES = {  # the mixed run's still images: name -> (fixture image, how it is stored)
    "single_face.jpg": ("single_face.jpg", "copy"), "multi_face.jpg": ("multi_face.jpg", "copy"),
    "mountain.jpg": ("free-mountain-vector-01.jpg", "copy"),  # no face
    "rotated.jpg": ("single_face.jpg", "exif"),  # stored turned 90 degrees, EXIF orientation 6 turns it back
    "gray.png": ("0-f1-su-ph.jpg", "L"), "alpha.webp": ("0-f15-hao-ph.jpg", "RGBA"),
    "angry.bmp": ("15-f13-anc-ph.jpg", "copy"), "broken.jpg": ("single_face.jpg", "truncated"),  # cut in its header
    "half.jpg": ("single_face.jpg", "half"),  # its header whole, half its pixels: fails where it is decoded
}
CUT = ("truncated", "half")  # the ways of storing in IMAGES that cut the file (no image is read from it)


def make_images(folder: Path) -> list[Path]:
    """``IMAGES`` written into ``folder`` from the fixture images (Pillow)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, (source, how) in IMAGES.items():
        src, dest = FIXTURES / "images" / source, folder / name
        if how in CUT:
            data = src.read_bytes()
            dest.write_bytes(data[:2000] if how == "truncated" else data[:len(data) // 2])
            continue
        img = Image.open(src)
        if how == "exif":
            exif = Image.Exif()
            exif[0x0112] = 6  # display: turn 90 degrees clockwise
            img.transpose(Image.Transpose.ROTATE_90).save(dest, exif=exif, quality=95)
        elif how == "RGBA":
            rgba = img.convert("RGBA")
            rgba.putalpha(Image.new("L", img.size, 255))
            rgba.save(dest, lossless=True)
        else:
            (img.convert("L") if how == "L" else img).save(dest)
    return [folder / n for n in IMAGES]


@pytest.fixture(scope="session")
def annotated_run(tmp_path_factory, _ray_session, detector_weights, landmark_weights):
    """One real ``annotate`` run through the Python API (random-tiny S2D video and image models, the fixture
    detector and landmarks, overlay videos and the report) over the golden copy's input videos and, in
    ``images/``, ``IMAGES``: (its ``--out``, the DataFrame it returned). Shared by the tests that read a run's
    outputs (API rows, images, overlay, report)."""
    from golden.make_golden import inputs

    from pipeline import annotate

    ensure_ray(2)
    base = tmp_path_factory.mktemp("annotated")
    inputs(base / "inputs")
    make_images(base / "inputs" / "images")
    df = annotate(base / "inputs", out=base / "out", weights="random-tiny", image_weights="random-tiny",
                  overlay=True, progress=False, detector_weights=str(detector_weights),
                  landmark_weights=str(landmark_weights))
    return base / "out", df


@pytest.fixture(scope="session")
def annotated(annotated_run) -> Path:
    """The ``--out`` of ``annotated_run``."""
    return annotated_run[0]
