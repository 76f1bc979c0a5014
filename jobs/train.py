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
from pathlib import Path

import pyarrow.fs as pafs
import torch
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

import s2d_model as S
from pipeline import storage
from pipeline.cluster import data_task_cpus, init_ray, plan_workers, resources as cluster_resources
from pipeline.crops import check_order
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
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .datasets import eval_dataset, load_split, stratified_split, train_dataset

    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(DEFAULTS))}")
    o = {**DEFAULTS, **options}
    frame_order = check_order(o["frame_order"])
    out = storage.absolute(out)
    storage.check_output(out)

    # Everything that can be checked before Ray starts is checked here. Paths absolute: workers run elsewhere;
    # a URI stays one (each worker's node fetches its own copy).
    landmark = _weights(o["landmark_weights"])  # WeightsNotFound names the file and where
    init = _weights(o["init"]) if o["init"] else None
    if stage == "dynamic" and init is None:
        print("WARNING: no --init checkpoint: the dynamic stage starts from random weights (the authors start "
              "from their static image model, e.g. `s2d-affectnet7-image`)")
    split = load_split(data, format, "train", o["fold"], o["labels"])
    train, val = stratified_split(split.samples, o["val_fraction"], o["seed"])
    workers, bs = int(o["workers"]), int(o["batch_size"])
    per_rank = len(train) // workers
    if per_rank == 0:
        raise ValueError(f"{len(train)} training samples cannot feed {workers} workers")
    steps = per_rank // bs if per_rank >= bs else 1
    ferv = format.lower() == "ferv39k"
    mixup = (not ferv) if o["mixup"] is None else bool(o["mixup"])
    if mixup and bs % 2:
        print(f"WARNING: batch size {bs} is odd: timm Mixup needs even batches, so mixup/cutmix is off")
        mixup = False
    image_mode = stage == "static"
    num_frames = 1 if image_mode else int(o["num_frames"])

    cfg = dict(
        stage=stage, model=o["model"], num_classes=split.num_classes, label_names=list(split.label_names),
        label_set=split.label_set, num_frames=num_frames, epochs=int(o["epochs"]), batch_size=bs,
        steps_per_epoch=steps, drop_last=per_rank >= bs, warmup_epochs=float(o["warmup_epochs"]),
        peak_lr=(o["lr"] if o["lr"] is not None else STATIC_LR if image_mode else DYNAMIC_LR) * bs * workers / 8,
        min_lr=float(o["min_lr"]), weight_decay=float(o["weight_decay"]), mixup=mixup,
        label_smoothing=(0.0 if ferv else 0.1) if o["label_smoothing"] is None else float(o["label_smoothing"]),
        head_dropout=0.0 if ferv else None, sdl=bool(o["sdl"]), sdl_schedule=[list(x) for x in o["sdl_schedule"]],
        sdl_k=int(o["sdl_k"]), sdl_queue=int(o["sdl_queue"]), landmark_weights=landmark, init=init,
        trust=bool(o["trust"]), seed=int(o["seed"]), cpus_per_worker=float(o["cpus_per_worker"]),
        has_val=bool(val), n_val=len(val), run_dir=str(out),
        data=str(storage.absolute(data)), format=format, fold=o["fold"], crop=split.crop,
        frame_order=None if image_mode else frame_order,
    )
    print(f"{stage} stage: {format} {split.source}: {len(train)} train / {len(val)} val samples, "
          f"{split.num_classes} classes, {workers} worker(s) x batch {bs}, {steps} steps/epoch, "
          f"peak lr {cfg['peak_lr']:.3g}, mixup {'on' if mixup else 'off'}, "
          f"oversample {'on' if o['oversample'] else 'off'}, sdl {'on' if o['sdl'] else 'off'}"
          f"{'' if image_mode else f', frame order {frame_order}'}{f', crop {split.crop}' if split.crop else ''}"
          f" -> {out}")

    init_ray(o["address"])
    have_cpus, have_gpus, _ = cluster_resources()
    cfg["cpus_per_worker"], note = plan_workers(workers, float(o["cpus_per_worker"]), float(o["gpus_per_worker"]),
                                                 have_cpus, have_gpus)
    if note:
        print(note)
    task_cpus = data_task_cpus(have_cpus, workers, cfg["cpus_per_worker"])
    datasets = {"train": train_dataset(train, num_frames=num_frames, image_mode=image_mode, augment=o["augment"],
                                       oversample=o["oversample"], decode_batch_size=o["decode_batch_size"],
                                       num_cpus=task_cpus, frame_order=frame_order)}
    if val:
        datasets["val"] = eval_dataset(val, num_frames=num_frames, image_mode=image_mode, pad_to_multiple=workers,
                                       decode_batch_size=o["decode_batch_size"], num_cpus=task_cpus,
                                       frame_order=frame_order)
    gpus = float(o["gpus_per_worker"])
    resources = {"CPU": cfg["cpus_per_worker"], **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=storage.name(out), storage_path=str(storage.parent(out)),
            failure_config=FailureConfig(max_failures=int(o["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=o["num_to_keep"],
                                               checkpoint_score_attribute="val_uar" if val else None,
                                               checkpoint_score_order="max")),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"),
    )
    result = trainer.fit()
    return _summarise(result, out, cfg)


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
        try:  # a hard link: no copy of a 380 MB file, and it outlives Ray's checkpoint pruning
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
def _train_loop(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    from timm.data import Mixup

    # DDP notes that the 1x1-conv gradients are laid out unlike its buckets: harmless, and noisy every step
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg["seed"] * 1000 + rank)
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    amp = device.type == "cuda"
    image = cfg["stage"] == "static"
    c = cfg["num_classes"]

    checkpoint = ray.train.get_checkpoint()  # set when resuming (a re-run, or a restart after a failure)
    model = build_model({**cfg, "init": None} if checkpoint is not None else cfg, verbose=rank == 0)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["peak_lr"], betas=(0.9, 0.999))
    scheduler = lr_schedule(optimizer, cfg)
    criterion = SoftTargetCrossEntropy()
    anchors = None
    if cfg["sdl"]:
        anchors = EmotionAnchors(c, model.embed_dim, k=cfg["sdl_k"], size=cfg["sdl_queue"], device=device)

    start_epoch = 0
    if checkpoint is not None:
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

    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    net = ddp.module if hasattr(ddp, "module") else ddp  # the bare model, for no-grad forwards
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=cfg["label_smoothing"],
                  num_classes=c) if cfg["mixup"] else None

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if cfg["has_val"] else None
    steps = cfg["steps_per_epoch"]

    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.time()
        ddp.train()
        w_sdl = sdl_weight(epoch, cfg["sdl_schedule"]) if anchors is not None else 0.0
        stats = torch.zeros(5, dtype=torch.float64, device=device)  # loss sum, sdl loss, sdl steps, correct, n
        lr = 0.0
        for i, batch in enumerate(train_shard.iter_torch_batches(batch_size=cfg["batch_size"],
                                                                 drop_last=cfg["drop_last"])):
            if i >= steps:  # equal shards give every rank the same count; this only guards the DDP lockstep
                continue  # (and drains the shard: the streaming split expects every consumer to finish)
            scheduler.step_update(epoch * steps + i)
            lr = optimizer.param_groups[0]["lr"]
            x = to_model_input(batch["clip"].to(device))  # [B, 3, T, H, W]
            x = x[:, :, 0] if image else x  # images [B, 3, H, W]
            y = batch["label"].to(device)  # [B]
            if mixup is not None and len(y) % 2 == 0:
                xm, target = apply_mixup(mixup, x, y)
            else:
                xm, target = x, mixup_target(y, c, smoothing=cfg["label_smoothing"])  # smoothed one-hot
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, feature = ddp(xm, return_feature=True)  # [B, C], [B, D]
            loss = criterion(logits.float(), target)
            sdl_loss = None
            if anchors is not None and w_sdl > 0 and anchors.ready:
                sdl_loss = anchors.loss(logits, feature)
                loss = loss + w_sdl * sdl_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if anchors is not None:  # refresh the queues with the un-mixed batch, by ground-truth class
                if xm is x:
                    q_logits, q_feature = logits, feature
                else:
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        q_logits, q_feature = net(x, return_feature=True)
                anchors.update(q_feature, q_logits.float().softmax(-1), y)
            stats += torch.tensor([loss.item() * len(y), 0.0 if sdl_loss is None else sdl_loss.item(),
                                   0.0 if sdl_loss is None else 1.0,
                                   (logits.argmax(-1) == y).sum().item(), len(y)], dtype=torch.float64, device=device)

        confusion = torch.zeros(c, c, dtype=torch.float64, device=device)  # [true, predicted]
        if val_shard is not None:
            net.eval()
            for batch in val_shard.iter_torch_batches(batch_size=cfg["batch_size"]):
                pred = predict_views(net, batch["clip"], batch["views"], amp=amp).argmax(-1)  # [B]
                keep = batch["weight"].to(device) > 0  # padding rows have weight 0
                confusion.index_put_((batch["label"].to(device)[keep], pred[keep]),
                                     torch.ones(int(keep.sum()), dtype=torch.float64, device=device), accumulate=True)
        if world > 1:  # (on GPU the tensors live there: NCCL reduces device tensors only)
            import torch.distributed as dist

            for t in (stats, confusion):
                dist.all_reduce(t)
        stats, confusion = stats.cpu(), confusion.cpu()
        metrics = {"epoch": epoch, "train_loss": stats[0].item() / max(1.0, stats[4].item()),
                   "train_acc": stats[3].item() / max(1.0, stats[4].item()),
                   "sdl_loss": stats[1].item() / stats[2].item() if stats[2] > 0 else None,
                   "sdl_weight": w_sdl, "lr": lr}
        if val_shard is not None:
            m = metrics_from_confusion(confusion.numpy())
            metrics.update(val_uar=m["uar"], val_war=m["war"], val_n=m["n"])
            if m["n"] != cfg["n_val"] and rank == 0:
                print(f"WARNING: validation saw {m['n']} of {cfg['n_val']} samples")
        metrics["seconds"] = time.time() - t0

        state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
                 "sdl": anchors.state_dict() if anchors is not None else None}
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                _save(net, Path(d), cfg, epoch, metrics, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics, checkpoint=None)
        if rank == 0:
            write_metrics_row(cfg["run_dir"], metrics)
            val = (f"  val UAR {100 * metrics['val_uar']:.2f} WAR {100 * metrics['val_war']:.2f}"
                   if "val_uar" in metrics else "")
            sdl = f"  sdl {metrics['sdl_loss']:.4f} (w {w_sdl})" if metrics["sdl_loss"] is not None else ""
            print(f"epoch {epoch + 1}/{cfg['epochs']}  loss {metrics['train_loss']:.4f}  "
                  f"acc {100 * metrics['train_acc']:.1f}  lr {lr:.3g}{sdl}{val}  ({metrics['seconds']:.1f} s)",
                  flush=True)
