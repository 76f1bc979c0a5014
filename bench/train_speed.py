"""Training speed: samples/s of the data pipeline alone, the training step alone, and the two together.

    python bench/train_speed.py [--models s2d_tiny s2d_base_patch16_224] [--workers 1 2] [--batch 2]
                                [--steps 4] [--stage dynamic|static] [--workdir DIR] [--num-cpus N]

One local Ray (``ray.init(num_cpus=--num-cpus)``) and, per (model, workers), one Ray Train run of a bench loop
that times three phases on every worker, one after the other:

- ``data``: ``get_dataset_shard("train").iter_torch_batches`` alone -- the real training dataset of
  ``jobs/datasets.py`` (random 16-frame window, RandAugment, RandomResizedCrop, flip, erasing; or images for
  ``--stage static``), decoded in Ray Data tasks from a DFEW-layout folder of 16-frame 224x224 JPEG clips
  made from the real fixture face video (``single_face.mp4``, face crops of consecutive windows).
- ``step``: the training step alone on a synthetic uint8 batch already in the worker: normalisation, mixup,
  forward, loss, backward, AdamW step (DDP with find_unused_parameters when workers > 1), like ``_train_loop``.
- ``both``: the two together (the shard's batches through the step).

The data phase runs first, in its own epoch, before the model is built (so that nothing is prefetched
meanwhile); "both" reads a second epoch. After one warm-up batch per phase, ``--steps`` batches (data:
max(24, 2 x steps)) are timed on each worker; samples/s is the global rate: workers x batch x batches / the
slowest worker's time; ``s/step`` is that time per batch. A first row times ``decode_train`` (decode +
augment) in this process on one core, for reference.

CPU-only machines: workers share the cores with the Ray Data decode tasks, so "both" is bounded by the
sum of the two costs. Timings on a shared machine are noisy: the notes print the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))


# ============================================================================ a small DFEW-layout dataset
def make_dataset(root: Path, clips: int = 14, frames: int = 16) -> Path:
    """clip_224x224_16f/<id>/ face clips cut from the fixture video + a DFEW-style fold CSV (1-based labels)."""
    import numpy as np
    from PIL import Image

    from pipeline.decode import get_decoder

    if (root / "EmoLabel_DataSplit").exists():
        return root
    video = np.concatenate([c["frames"] for c in get_decoder("pyav").iter_chunks(
        FIXTURES / "videos" / "single_face.mp4", fps=None)])  # [72, 360, 640, 3]
    cx, cy, side = 296, 186, 260  # the face box centre (fixtures README), a square 1.2x its height
    crop = video[:, cy - side // 2:cy + side // 2, cx - side // 2:cx + side // 2]
    starts = np.linspace(0, len(crop) - frames, clips).astype(int)
    rows = ["video_name,label"]
    for i, s in enumerate(starts, start=1):
        folder = root / "clip_224x224_16f" / f"{i:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, f in enumerate(crop[s:s + frames], start=1):
            Image.fromarray(f).resize((224, 224), Image.BILINEAR).save(folder / f"{j:05d}.jpg", quality=90)
        rows.append(f"{i:05d},{(i - 1) % 7 + 1}")
    anno = root / "EmoLabel_DataSplit" / "train(single-labeled)"
    anno.mkdir(parents=True, exist_ok=True)
    (anno / "set_1.csv").write_text("\n".join(rows) + "\n")
    return root


# ============================================================================ the bench loop (a Ray Train worker)
def bench_loop(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from timm.data import Mixup

    import s2d_model as S
    from jobs.augment import to_model_input
    from timm.loss import SoftTargetCrossEntropy

    from jobs.train import apply_mixup, param_groups

    ctx = ray.train.get_context()
    world = ctx.get_world_size()
    torch.set_num_threads(1)
    image = cfg["stage"] == "static"
    bs, steps, data_steps = cfg["batch"], cfg["steps"], cfg["data_steps"]
    shard = ray.train.get_dataset_shard("train")

    def timed(fn, n):  # -> the slowest worker's seconds for n calls (after the caller's warm-up)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    # 1. data alone, before the model exists (so nothing is prefetched while it is built): one epoch
    batches = iter(shard.iter_torch_batches(batch_size=bs, drop_last=True))
    next(batches)  # warm-up: the pipeline starts
    data_s = timed(lambda: next(batches), data_steps)
    for _ in batches:  # finish the epoch: the streaming split starts the next one when every worker has
        pass

    # 2. the step alone, on a synthetic batch
    model = S.create_image_model(cfg["model"], 7) if image else S.create_model(cfg["model"], 7, num_frames=16)
    if cfg["landmark_weights"]:
        S.load_landmark_weights(model, cfg["landmark_weights"])
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-5)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=7)

    def step(clip, label):
        x = to_model_input(clip)
        x = x[:, :, 0] if image else x
        if len(label) % 2 == 0:
            xm, target = apply_mixup(mixup, x, label)
        else:
            xm, target = x, torch.nn.functional.one_hot(label, 7).float()
        loss = SoftTargetCrossEntropy()(ddp(xm).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    g = torch.Generator().manual_seed(0)
    synthetic = torch.randint(0, 256, (bs, 1 if image else 16, 224, 224, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(bs) % 7
    step(synthetic, labels)  # warm-up
    step_s = timed(lambda: step(synthetic, labels), steps)

    # 3. both: a new epoch of the shard through the step
    batches = iter(shard.iter_torch_batches(batch_size=bs, drop_last=True))
    b = next(batches)
    step(b["clip"], b["label"])  # warm-up

    def from_shard():
        b = next(batches)
        step(b["clip"], b["label"])

    both_s = timed(from_shard, steps)
    for _ in batches:
        pass
    if ctx.get_world_rank() == 0:  # (Ray Train V2 keeps metrics only with checkpoints: write them to a file)
        Path(cfg["out"]).write_text(json.dumps({
            "data": world * bs * data_steps / data_s, "data_s": data_s / data_steps,
            "step": world * bs * steps / step_s, "step_s": step_s / steps,
            "both": world * bs * steps / both_s, "both_s": both_s / steps}))
    ray.train.report({})


def data_steps(args) -> int:
    return max(24, 2 * args.steps)


def run_row(model: str, workers: int, args, samples, landmark) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.datasets import train_dataset

    image = args.stage == "static"
    need = workers * args.batch * (max(args.steps, data_steps(args)) + 1)  # rows per epoch: warm-up + timed
    rows = (samples * (need // len(samples) + 1))[:need]
    ds = train_dataset(rows, num_frames=16, image_mode=image, augment=True, oversample=False)
    with tempfile.TemporaryDirectory(dir=args.workdir) as storage:
        out = Path(storage) / "metrics.json"
        trainer = TorchTrainer(
            bench_loop,
            train_loop_config=dict(model=model, stage=args.stage, num_frames=16, batch=args.batch,
                                   steps=args.steps, data_steps=data_steps(args), landmark_weights=landmark,
                                   out=str(out)),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"bench-{model}-{workers}", storage_path=storage),
            datasets={"train": ds})
        trainer.fit()
        return json.loads(out.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["s2d_tiny", "s2d_base_patch16_224"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=2, help="per worker (even, so that mixup runs)")
    p.add_argument("--steps", type=int, default=4, help="timed batches per phase")
    p.add_argument("--stage", choices=["dynamic", "static"], default="dynamic")
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "s2d-train-speed"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import numpy as np
    import ray

    from jobs.datasets import decode_train, load_split

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    data = make_dataset(Path(args.workdir) / "DFEW")
    samples = load_split(data, "dfew", "train", fold=1).samples
    landmark = FIXTURES / "weights" / "mobilefacenet_68pt.pth.tar"
    landmark = str(landmark) if landmark.is_file() else None  # speed does not depend on the weights
    load0 = os.getloadavg()

    import torch

    torch.set_num_threads(1)
    batch = {k: np.array([s[k] for s in samples[:4]]) for k in ("path", "kind", "label")}
    decode_train(batch, num_frames=16, size=224, image_mode=args.stage == "static", augment=True)  # warm-up
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        decode_train(batch, num_frames=16, size=224, image_mode=args.stage == "static", augment=True)
    local = 4 * reps / (time.perf_counter() - t0)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    for model in args.models:
        for workers in args.workers:
            t0 = time.perf_counter()
            m = run_row(model, workers, args, samples, landmark)
            results.append((model, workers, m, time.perf_counter() - t0))
            print(f"  done {model} x{workers} in {results[-1][3]:.0f} s", file=sys.stderr, flush=True)
    ray.shutdown()

    unit = "clips" if args.stage == "dynamic" else "images"
    print(f"\n{args.stage} stage, batch {args.batch} per worker, {args.steps} timed steps per phase, "
          f"{unit} of 16 x 224 x 224 frames" if args.stage == "dynamic" else
          f"\n{args.stage} stage, batch {args.batch} per worker, {args.steps} timed steps per phase, 224 x 224 images")
    header = f"{'model':22s} {'workers':>7s} {'phase':>6s} {unit + '/s':>10s} {'s/step':>8s}"
    print(header)
    print("-" * len(header))
    print(f"{'(decode+augment, 1 core, in-process)':37s} {local:10.2f} {4 / local:8.2f}  (batch of 4)")
    for model, workers, m, _ in results:
        for phase in ("data", "step", "both"):
            print(f"{model:22s} {workers:7d} {phase:>6s} {m[phase]:10.2f} {m[phase + '_s']:8.2f}")
    print(f"\nnotes: {os.cpu_count()} CPUs; local Ray with {args.num_cpus} logical CPUs; torch threads 1 per worker; "
          f"load average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    if os.environ.get("S2D_BENCH_KEEP") != "1":
        shutil.rmtree(Path(args.workdir) / "DFEW", ignore_errors=True)


if __name__ == "__main__":
    main()
