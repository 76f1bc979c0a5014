"""Ray Train jobs for both S2D stages: ``train_static`` (S2DImage) and ``train_dynamic`` (S2DVideo).

One driver function (``_run``) reads the dataset, carves a stratified validation split, builds the Ray
Datasets (``jobs/datasets.py``) and starts a ``TorchTrainer``; one worker loop (``_train_loop``) trains.

Recipe (``../shared/S2D_REFERENCE.md`` section 3):
- AdamW (0.9, 0.999), weight decay 0.05 except 1-D parameters, ``pos_embed``, ``temporal_embedding`` and
  ``cls_token``; peak lr = ``lr`` x total batch / 8; linear warm-up from 0 for 2 epochs, then cosine down to
  ``min_lr`` (1e-6, VideoMAE's default), set every step (timm ``CosineLRScheduler``); loss: timm
  ``SoftTargetCrossEntropy`` on the mixed (or smoothed one-hot) targets.
- dynamic stage: ``lr`` 1e-5 (the authors' scripts), ``create_model`` already freezes all but the temporal
  embedding, ``ln_post``, head, prompts and adapters; ``--init`` an image or video checkpoint.
- static stage: ``lr`` 2.5e-6, i.e. MAE-SFER's AffectNet-7 command (``--learning-rate 1e-5`` per 32-image
  GPU batch, times the world size) restated per 8 samples; every non-landmark parameter that the model
  leaves trainable is trained (``pos_embed`` stays fixed, as in MAE's fixed position embedding).
- mixup 0.8 / cutmix 1.0 with label smoothing 0.1 (timm ``Mixup``) on each training batch; off for FERV39K
  (also no smoothing and head dropout 0 there, as the authors' FERV39K script) and on odd-sized batches.
  A clip [B, 3, T, H, W] is mixed as [B, 3T, H, W] so the CutMix box is the same on every frame.
- bf16 autocast on GPU only; DDP with ``find_unused_parameters=True`` (``prompt_norms.11`` gets no grad).
- oversampling: every epoch draws len(train) samples with replacement, probabilities 1 / count(class)
  (a draw-slot dataset, see ``datasets.draw_oversampled``).
- self-distillation (``jobs/sdl.py``): per-class anchors, BCE-with-logits towards their soft targets,
  weighted by the epoch schedule; queues refreshed after every step with the batch's un-mixed features and
  softmax, by ground-truth class.

Outputs in the run dir ``out``: Ray Train's checkpoints (``checkpoint_*/model.pth`` in our
``save_checkpoint`` format plus ``train_state.pt``), ``metrics.jsonl`` and ``metrics.csv`` (one row per
epoch, rank 0; ``epoch`` is 0-based there and in ``sdl_schedule``, 1-based in the printed lines), and at the
end ``best.pth`` (highest val UAR) and ``last.pth``, which ``s2d_model.load_checkpoint`` loads. Running the
same command again resumes from the latest checkpoint (Ray Train V2 restores a run from
``RunConfig(name, storage_path)``); the epoch counter continues. With ``max_failures`` N, a crashed worker
makes Ray Train restart the whole worker group from the latest checkpoint, up to N times. ``out`` (and
``data``, ``init``) may be URIs (``s3://bucket/runs/r1``, ``pipeline.storage``): Ray Train keeps its checkpoints
there, and ``best.pth`` / ``last.pth`` are copies made by the store.

Options (``DEFAULTS``): ``fold`` (DFEW/MAFW 1..5), ``labels`` (generic CSV: a label-set name or
comma-separated class names), ``model``, ``epochs``, ``batch_size`` (per worker), ``lr`` (per 8 samples),
``workers``, ``gpus_per_worker`` (0: CPU), ``cpus_per_worker``, ``seed``, ``init``, ``trust`` (unpickle an
``init`` file outside the allow-list), ``oversample``, ``sdl``, ``landmark_weights``, ``val_fraction``,
``max_failures``, ``num_to_keep``, ``address``, ``num_frames``, ``warmup_epochs``, ``min_lr``,
``weight_decay``, ``mixup`` / ``label_smoothing`` (None: the dataset's default), ``augment``,
``sdl_schedule`` ((from_epoch, weight) pairs), ``sdl_k``, ``sdl_queue``, ``decode_batch_size``, ``frame_order``
(``time`` or ``lexicographic``: how a frame folder's files are ordered, ``jobs/datasets.py``).

Each checkpoint's meta records what the model was trained on: ``frame_order`` (dynamic stage; None for the
image model) and ``crop``, the face crop the dataset names (a ``dataset.json`` beside a ``csv`` dataset's CSVs,
as ``s2d prepare`` writes it), None when the dataset does not say.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

import s2d_model as S
from pipeline import storage
from pipeline.cluster import init_ray, resources as cluster_resources
from pipeline.crops import check_order
from pipeline.plans import data_task_cpus, plan_workers
from s2d_model import weights as W
from s2d_model.files import atomic_write

from .augment import to_model_input
from .evaluate import metrics_from_confusion, predict_views
from .sdl import DEFAULT_SCHEDULE, EmotionAnchors, sdl_weight

STATIC_LR = 2.5e-6  # per 8 samples; MAE-SFER AffectNet-7: 1e-5 per 32-image GPU batch
DYNAMIC_LR = 1e-5  # per 8 samples; the authors' ft_*.sh
NO_DECAY = ("pos_embed", "temporal_embedding", "cls_token")

DEFAULTS = dict(
    fold=None, labels=None, model="s2d_base_patch16_224", epochs=100, batch_size=8, lr=None, workers=1,
    gpus_per_worker=0, cpus_per_worker=1, seed=0, init=None, trust=False, oversample=False, sdl=False,
    landmark_weights="mobilefacenet", val_fraction=0.1, max_failures=0, num_to_keep=2, address=None,
    num_frames=16, warmup_epochs=2, min_lr=1e-6, weight_decay=0.05, mixup=None, label_smoothing=None,
    augment=True, sdl_schedule=DEFAULT_SCHEDULE, sdl_k=2, sdl_queue=16, decode_batch_size=4, frame_order="time",
)


def train_static(data: str | Path, format: str, out: str | Path, **options) -> dict:
    """Train the image model (S2DImage). Options: see ``DEFAULTS``; ``lr`` defaults to ``STATIC_LR``."""
    return _run("static", data, format, out, **options)


def train_dynamic(data: str | Path, format: str, out: str | Path, **options) -> dict:
    """Train the video model (S2DVideo). Options: see ``DEFAULTS``; ``lr`` defaults to ``DYNAMIC_LR``."""
    return _run("dynamic", data, format, out, **options)


# ============================================================================ driver
def _run(stage: str, data, format: str, out, **options) -> dict:
    from .datasets import load_split, stratified_split

    o = _options(options)
    out = storage.absolute(out)
    storage.check_output(out)
    # Everything that can be checked before Ray starts is checked here. Paths absolute: workers run elsewhere;
    # a URI stays one (each worker's node fetches its own copy).
    landmark, init = _stage_weights(stage, o)
    split = load_split(data, format, "train", o["fold"], o["labels"])
    train, val = stratified_split(split.samples, o["val_fraction"], o["seed"])
    cfg = _train_config(stage, format, o, split, len(train), len(val))
    cfg.update(landmark_weights=landmark, init=init, run_dir=str(out), data=str(storage.absolute(data)))
    print(_describe(cfg, o, split.source, len(train)))

    init_ray(o["address"])
    cfg["cpus_per_worker"], task_cpus = _plan_cpus(o)
    trainer = _trainer(cfg, o, _datasets(cfg, o, train, val, task_cpus), out)
    return _summarise(trainer.fit(), out, cfg)


def _options(options: dict) -> dict:
    """``DEFAULTS`` updated with ``options``; TypeError naming an unknown option, ValueError for a bad frame order."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(DEFAULTS))}")
    o = {**DEFAULTS, **options}
    o["frame_order"] = check_order(o["frame_order"])
    return o


def _stage_weights(stage: str, o: dict) -> tuple[str, str | None]:
    """(landmark weights, ``init`` checkpoint or None), each resolved (``WeightsNotFound`` names the file)."""
    landmark = _weights(o["landmark_weights"])
    init = _weights(o["init"]) if o["init"] else None
    if stage == "dynamic" and init is None:
        print("WARNING: no --init checkpoint: the dynamic stage starts from random weights (the authors start "
              "from their static image model, e.g. `s2d-affectnet7-image`)")
    return landmark, init


def _use_mixup(asked, ferv: bool, batch_size: int) -> bool:
    """Mixup/CutMix on, unless asked off, or FERV39K by default, or an odd batch (timm Mixup needs even ones)."""
    mixup = (not ferv) if asked is None else bool(asked)
    if mixup and batch_size % 2:
        print(f"WARNING: batch size {batch_size} is odd: timm Mixup needs even batches, so mixup/cutmix is off")
        return False
    return mixup


def _train_config(stage: str, format: str, o: dict, split, n_train: int, n_val: int) -> dict:
    """The worker loop's settings (``cfg``) that follow from the options and the training split."""
    workers, bs = int(o["workers"]), int(o["batch_size"])
    per_rank = n_train // workers
    if per_rank == 0:
        raise ValueError(f"{n_train} training samples cannot feed {workers} workers")
    ferv = format.lower() == "ferv39k"
    image_mode = stage == "static"
    return dict(
        stage=stage, model=o["model"], num_classes=split.num_classes, label_names=list(split.label_names),
        label_set=split.label_set, num_frames=1 if image_mode else int(o["num_frames"]), epochs=int(o["epochs"]),
        batch_size=bs, steps_per_epoch=per_rank // bs if per_rank >= bs else 1, drop_last=per_rank >= bs,
        warmup_epochs=float(o["warmup_epochs"]),
        peak_lr=(o["lr"] if o["lr"] is not None else STATIC_LR if image_mode else DYNAMIC_LR) * bs * workers / 8,
        min_lr=float(o["min_lr"]), weight_decay=float(o["weight_decay"]), mixup=_use_mixup(o["mixup"], ferv, bs),
        label_smoothing=(0.0 if ferv else 0.1) if o["label_smoothing"] is None else float(o["label_smoothing"]),
        head_dropout=0.0 if ferv else None, sdl=bool(o["sdl"]), sdl_schedule=[list(x) for x in o["sdl_schedule"]],
        sdl_k=int(o["sdl_k"]), sdl_queue=int(o["sdl_queue"]), trust=bool(o["trust"]), seed=int(o["seed"]),
        cpus_per_worker=float(o["cpus_per_worker"]), has_val=n_val > 0, n_val=n_val, format=format,
        fold=o["fold"], crop=split.crop, frame_order=None if image_mode else o["frame_order"],
    )


def _describe(cfg: dict, o: dict, source: str, n_train: int) -> str:
    """The run in one line, printed before Ray starts."""
    order = "" if cfg["stage"] == "static" else f", frame order {cfg['frame_order']}"
    crop = f", crop {cfg['crop']}" if cfg["crop"] else ""
    return (f"{cfg['stage']} stage: {cfg['format']} {source}: {n_train} train / {cfg['n_val']} val samples, "
            f"{cfg['num_classes']} classes, {int(o['workers'])} worker(s) x batch {cfg['batch_size']}, "
            f"{cfg['steps_per_epoch']} steps/epoch, peak lr {cfg['peak_lr']:.3g}, "
            f"mixup {'on' if cfg['mixup'] else 'off'}, oversample {'on' if o['oversample'] else 'off'}, "
            f"sdl {'on' if cfg['sdl'] else 'off'}{order}{crop} -> {cfg['run_dir']}")


def _plan_cpus(o: dict) -> tuple[float, float]:
    """(CPUs each worker reserves, CPUs each Ray Data task reserves) on the cluster Ray is connected to."""
    workers = int(o["workers"])
    have_cpus, have_gpus, _ = cluster_resources()
    each, note = plan_workers(workers, float(o["cpus_per_worker"]), float(o["gpus_per_worker"]), have_cpus, have_gpus)
    if note:
        print(note)
    return each, data_task_cpus(have_cpus, workers, each)


def _datasets(cfg: dict, o: dict, train: list[dict], val: list[dict], task_cpus: float) -> dict:
    """The Ray Datasets: ``train`` (augmented, optionally oversampled) and, when there is a split, ``val``."""
    from .datasets import eval_dataset, train_dataset

    image_mode = cfg["stage"] == "static"
    common = dict(num_frames=cfg["num_frames"], image_mode=image_mode, decode_batch_size=o["decode_batch_size"],
                  num_cpus=task_cpus, frame_order=o["frame_order"])
    datasets = {"train": train_dataset(train, augment=o["augment"], oversample=o["oversample"], **common)}
    if val:
        datasets["val"] = eval_dataset(val, pad_to_multiple=int(o["workers"]), **common)
    return datasets


def _trainer(cfg: dict, o: dict, datasets: dict, out):
    """A ``TorchTrainer`` of ``_train_loop``: the workers, and the run's name, storage, retries and checkpoints."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpus = float(o["gpus_per_worker"])
    resources = {"CPU": cfg["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    return TorchTrainer(
        _train_loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=int(o["workers"]), use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=storage.name(out), storage_path=str(storage.parent(out)),
            failure_config=FailureConfig(max_failures=int(o["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=o["num_to_keep"],
                                               checkpoint_score_attribute="val_uar" if cfg["has_val"] else None,
                                               checkpoint_score_order="max")),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )


def _weights(name) -> str:
    """A weights name or path -> its absolute local path; a URI is checked (and fetched here) and kept."""
    path = W.resolve(str(name)).resolve()
    return str(name) if storage.is_uri(name) else str(path)


def _summarise(result, out, cfg: dict) -> dict:
    """Export best.pth / last.pth from the run's checkpoints and describe the run."""
    latest = result.checkpoint
    best = latest
    if cfg["has_val"] and result.best_checkpoints:
        best = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_uar", -1.0))[0]
    paths = {}
    for name, ckpt in (("best", best), ("last", latest)):
        if ckpt is None:
            continue
        dst = storage.join(out, f"{name}.pth")
        if storage.is_uri(out):  # streamed from the checkpoint's object to the run's (the store copies it)
            dst_fs, dst_path = storage.filesystem(dst)
            pafs.copy_files(f"{ckpt.path}/model.pth", dst_path, source_filesystem=ckpt.filesystem,
                            destination_filesystem=dst_fs)
            paths[name] = str(dst)
            continue
        src = Path(ckpt.path) / "model.pth"
        tmp = dst.with_name(f".{dst.name}.link")
        tmp.unlink(missing_ok=True)
        try:  # a hard link: no copy of the checkpoint, and it outlives Ray's checkpoint pruning
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError:  # no hard links here (another file system): a copy
            with open(src, "rb") as f_src:
                atomic_write(dst, lambda f: shutil.copyfileobj(f_src, f, 1 << 20))
        paths[name] = str(dst)
    rows = read_metrics(out)
    return {"run_dir": str(out), "best_checkpoint": paths.get("best"), "last_checkpoint": paths.get("last"),
            "metrics": rows[-1] if rows else result.metrics, "history": rows,
            "best_metrics": max(rows, key=lambda r: r.get("val_uar", -1.0)) if rows else None,
            "metrics_jsonl": str(storage.join(out, "metrics.jsonl")),
            "metrics_csv": str(storage.join(out, "metrics.csv")),
            "num_classes": cfg["num_classes"], "label_names": cfg["label_names"]}


# ============================================================================ metrics files
METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "sdl_loss", "sdl_weight", "lr", "val_uar", "val_war",
                 "val_n", "seconds"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def write_metrics_row(run_dir: str | Path, row: dict) -> None:
    """Add an epoch's row to metrics.jsonl and metrics.csv, replacing rows of that epoch or later (a resumed
    run repeats the epochs after its last checkpoint)."""
    run_dir = storage.location(run_dir)
    rows = [r for r in read_metrics(run_dir) if r["epoch"] < row["epoch"]] + [row]
    storage.write(storage.join(run_dir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    storage.write(storage.join(run_dir, "metrics.csv"), text.getvalue())


# ============================================================================ pieces of the loop
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups (timm): with decay, and without (1-D, ``NO_DECAY``). The decay
    group comes first, as in the ``train_state.pt`` of runs started before timm made the groups."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_DECAY)
    return sorted(groups, key=lambda g: g["weight_decay"] == 0)


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: dict) -> CosineLRScheduler:
    """Per step (``step_update(step)``): linear warm-up from 0 to the optimizer's lr over ``warmup_epochs``, then
    cosine down to ``min_lr`` at the last step."""
    steps = cfg["steps_per_epoch"]
    total, warmup = cfg["epochs"] * steps, int(round(cfg["warmup_epochs"] * steps))
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=cfg["min_lr"], warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def apply_mixup(mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Mixup on images [B, 3, H, W] or clips [B, 3, T, H, W] (mixed as [B, 3T, H, W]: one box for all frames)."""
    shape = x.shape
    xm, target = mixup(x.reshape(shape[0], -1, *shape[-2:]).clone(), y)
    return xm.reshape(shape), target


def build_model(cfg: dict, verbose: bool = True):
    """The stage's model with the landmark branch loaded and the optional ``init`` checkpoint."""
    c = cfg["num_classes"]
    if cfg["stage"] == "static":
        model = S.create_image_model(cfg["model"], c)
    else:
        extra = {} if cfg.get("head_dropout") is None else {"head_dropout": cfg["head_dropout"]}
        model = S.create_model(cfg["model"], c, num_frames=cfg["num_frames"], **extra)
    S.load_landmark_weights(model, W.resolve(cfg["landmark_weights"]))  # a URI: fetched on this node
    if cfg.get("init"):
        S.load_checkpoint(model, W.resolve(cfg["init"]), trust=cfg.get("trust", False), verbose=verbose)
    return model


def _save(model, directory: Path, cfg: dict, epoch: int, metrics: dict, state: dict) -> None:
    S.save_checkpoint(model, directory / "model.pth", config=cfg["model"], labels=cfg["label_set"],
                      label_names=cfg["label_names"], stage=cfg["stage"], epoch=epoch,
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                      data=cfg["data"], format=cfg["format"], fold=cfg["fold"], crop=cfg["crop"],
                      frame_order=cfg["frame_order"])
    torch.save(state, directory / "train_state.pt")


# ============================================================================ the worker loop
@dataclass
class _Worker:
    """What one Ray Train worker trains with."""
    cfg: dict
    device: torch.device
    ddp: torch.nn.Module  # the model as Ray Train wrapped it (DDP when there are several workers)
    net: torch.nn.Module  # the bare model: no-grad forwards and checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    criterion: SoftTargetCrossEntropy
    anchors: EmotionAnchors | None
    mixup: Mixup | None

    def autocast(self):
        """bf16 autocast on GPU; a no-op elsewhere."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")


def _train_loop(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    # DDP notes that the 1x1-conv gradients are laid out unlike its buckets: harmless, and noisy every step
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg["seed"] * 1000 + rank)
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()  # set when resuming (a re-run, or a restart after a failure)
    w, start_epoch = _make_worker(cfg, device, checkpoint, rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if cfg["has_val"] else None
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.time()
        stats, lr, w_sdl = _train_epoch(w, train_shard, epoch)
        stats, confusion = _all_reduce(world, stats, _confusion(w, val_shard))
        metrics = _epoch_metrics(cfg, epoch, stats, confusion if val_shard is not None else None, w_sdl, lr, rank)
        metrics["seconds"] = time.time() - t0
        _report(w, epoch, metrics, rank)


def _make_worker(cfg: dict, device: torch.device, checkpoint, rank: int) -> tuple[_Worker, int]:
    """The model (from ``init``, or from ``checkpoint`` when resuming), its optimiser, schedule, SDL anchors and
    mixup, the model wrapped by Ray Train -> (the worker, the first epoch to train)."""
    import ray.train.torch

    model = build_model({**cfg, "init": None} if checkpoint is not None else cfg, verbose=rank == 0)
    model.to(device)  # before the optimiser: a resumed state is loaded onto its parameters' device
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["peak_lr"], betas=(0.9, 0.999))
    scheduler = lr_schedule(optimizer, cfg)
    criterion = SoftTargetCrossEntropy()
    anchors = None
    if cfg["sdl"]:
        anchors = EmotionAnchors(cfg["num_classes"], model.embed_dim, k=cfg["sdl_k"], size=cfg["sdl_queue"],
                                 device=device)
    start_epoch = _resume(checkpoint, model, optimizer, anchors, cfg, rank) if checkpoint is not None else 0
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    net = ddp.module if hasattr(ddp, "module") else ddp
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=cfg["label_smoothing"],
                  num_classes=cfg["num_classes"]) if cfg["mixup"] else None
    return _Worker(cfg, device, ddp, net, optimizer, scheduler, criterion, anchors, mixup), start_epoch


def _resume(checkpoint, model, optimizer, anchors, cfg: dict, rank: int) -> int:
    """Load a Ray Train checkpoint's model, optimiser and SDL queues -> the epoch to train next."""
    with checkpoint.as_directory() as d:
        S.load_checkpoint(model, Path(d) / "model.pth", verbose=False)
        state = torch.load(Path(d) / "train_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if anchors is not None and state.get("sdl") is not None:
        anchors.load_state_dict(state["sdl"])
    start_epoch = int(state["epoch"]) + 1
    if rank == 0:
        print(f"resuming from {checkpoint.path}: epoch {start_epoch + 1} of {cfg['epochs']}" if start_epoch <
              cfg["epochs"] else f"{checkpoint.path}: all {cfg['epochs']} epochs are done; nothing to train")
    return start_epoch


def _train_epoch(w: _Worker, shard, epoch: int) -> tuple[torch.Tensor, float, float]:
    """One pass over this worker's training shard -> (stats [5]: loss sum, sdl loss sum, sdl steps, correct, n;
    the lr of the last step; the epoch's SDL weight)."""
    cfg, steps = w.cfg, w.cfg["steps_per_epoch"]
    w.ddp.train()
    w_sdl = sdl_weight(epoch, cfg["sdl_schedule"]) if w.anchors is not None else 0.0
    stats = torch.zeros(5, dtype=torch.float64, device=w.device)
    lr = 0.0
    for i, batch in enumerate(shard.iter_torch_batches(batch_size=cfg["batch_size"], drop_last=cfg["drop_last"])):
        if i >= steps:  # equal shards give every rank the same count; this only guards the DDP lockstep
            continue  # (and drains the shard: the streaming split expects every consumer to finish)
        w.scheduler.step_update(epoch * steps + i)
        lr = w.optimizer.param_groups[0]["lr"]
        stats += _train_step(w, batch, w_sdl)
    return stats, lr, w_sdl


def _train_step(w: _Worker, batch: dict, w_sdl: float) -> torch.Tensor:
    """One optimiser step on a batch (mixed, or with smoothed one-hot targets) -> its stats [5]."""
    c = w.cfg["num_classes"]
    x = to_model_input(batch["clip"].to(w.device))  # [B, 3, T, H, W]
    x = x[:, :, 0] if w.cfg["stage"] == "static" else x  # images [B, 3, H, W]
    y = batch["label"].to(w.device)  # [B]
    if w.mixup is not None and len(y) % 2 == 0:
        xm, target = apply_mixup(w.mixup, x, y)
    else:
        xm, target = x, mixup_target(y, c, smoothing=w.cfg["label_smoothing"])  # smoothed one-hot
    with w.autocast():
        logits, feature = w.ddp(xm, return_feature=True)  # [B, C], [B, D]
    loss = w.criterion(logits.float(), target)
    sdl_loss = None
    if w.anchors is not None and w_sdl > 0 and w.anchors.ready:
        sdl_loss = w.anchors.loss(logits, feature)
        loss = loss + w_sdl * sdl_loss
    w.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    w.optimizer.step()
    if w.anchors is not None:  # refresh the queues with the un-mixed batch, by ground-truth class
        q_logits, q_feature = logits, feature
        if xm is not x:
            with torch.no_grad(), w.autocast():
                q_logits, q_feature = w.net(x, return_feature=True)
        w.anchors.update(q_feature, q_logits.float().softmax(-1), y)
    return torch.tensor([loss.item() * len(y), 0.0 if sdl_loss is None else sdl_loss.item(),
                         0.0 if sdl_loss is None else 1.0, (logits.argmax(-1) == y).sum().item(), len(y)],
                        dtype=torch.float64, device=w.device)


def _confusion(w: _Worker, shard) -> torch.Tensor:
    """[C, C] validation counts [true, predicted] of this worker's shard (zeros without one)."""
    c = w.cfg["num_classes"]
    confusion = torch.zeros(c, c, dtype=torch.float64, device=w.device)
    if shard is None:
        return confusion
    w.net.eval()
    for batch in shard.iter_torch_batches(batch_size=w.cfg["batch_size"]):
        pred = predict_views(w.net, batch["clip"], batch["views"], amp=w.device.type == "cuda").argmax(-1)  # [B]
        keep = batch["weight"].to(w.device) > 0  # padding rows have weight 0
        confusion.index_put_((batch["label"].to(w.device)[keep], pred[keep]),
                             torch.ones(int(keep.sum()), dtype=torch.float64, device=w.device), accumulate=True)
    return confusion


def _all_reduce(world: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Sums over the workers, on the CPU (on GPU the tensors live there: NCCL reduces device tensors only)."""
    if world > 1:
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)
    return [t.cpu() for t in tensors]


def _epoch_metrics(cfg: dict, epoch: int, stats: torch.Tensor, confusion: torch.Tensor | None, w_sdl: float,
                   lr: float, rank: int) -> dict:
    """The epoch's metrics row (``METRIC_FIELDS`` but ``seconds``); validation ones when ``confusion`` is given."""
    n = max(1.0, stats[4].item())
    metrics = {"epoch": epoch, "train_loss": stats[0].item() / n, "train_acc": stats[3].item() / n,
               "sdl_loss": stats[1].item() / stats[2].item() if stats[2] > 0 else None, "sdl_weight": w_sdl, "lr": lr}
    if confusion is not None:
        m = metrics_from_confusion(confusion.numpy())
        metrics.update(val_uar=m["uar"], val_war=m["war"], val_n=m["n"])
        if m["n"] != cfg["n_val"] and rank == 0:
            print(f"WARNING: validation saw {m['n']} of {cfg['n_val']} samples")
    return metrics


def _report(w: _Worker, epoch: int, metrics: dict, rank: int) -> None:
    """Report the epoch to Ray Train (rank 0 with a checkpoint); rank 0 also writes and prints its metrics."""
    import ray.train

    cfg = w.cfg
    state = {"epoch": epoch, "optimizer": w.optimizer.state_dict(),
             "sdl": w.anchors.state_dict() if w.anchors is not None else None}
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            _save(w.net, Path(d), cfg, epoch, metrics, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)
    if rank == 0:
        write_metrics_row(cfg["run_dir"], metrics)
        print(_epoch_line(cfg, metrics), flush=True)


def _epoch_line(cfg: dict, metrics: dict) -> str:
    val = (f"  val UAR {100 * metrics['val_uar']:.2f} WAR {100 * metrics['val_war']:.2f}"
           if "val_uar" in metrics else "")
    sdl = f"  sdl {metrics['sdl_loss']:.4f} (w {metrics['sdl_weight']})" if metrics["sdl_loss"] is not None else ""
    return (f"epoch {metrics['epoch'] + 1}/{cfg['epochs']}  loss {metrics['train_loss']:.4f}  "
            f"acc {100 * metrics['train_acc']:.1f}  lr {metrics['lr']:.3g}{sdl}{val}  ({metrics['seconds']:.1f} s)")
