"""The S2D actor: batches of aligned uint8 clips -> class probabilities; which weights and labels a run uses.

Videos' 16-frame clips go to the video model (S2DVideo); a still image's faces come as one-frame clips and go to
the static image model (S2DImage, the first training stage's model), when the run has images."""
from __future__ import annotations

import collections
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import storage
from .crops import OUR_CROP, Crop, check_order, frame_permutation, parse_crop

RANDOM_TINY = "random-tiny"
FACEAPI = "faceapi-expression"
FACEAPI_TO_DFEW = (1, 2, 0, 3, 6, 5, 4)  # for each DFEW class (Happy, Sad, Neutral, ...), face-api's output index
UNTRAINED_WARNING = "weights 'random-tiny' (an s2d_tiny with random weights) are untrained: labels are meaningless"
IMAGE_WARNING = "image weights 'random-tiny' (an s2d_tiny with random weights) are untrained: labels are meaningless"


@dataclass(frozen=True)
class Classifier:
    """What the annotate run needs to know about its weights before any work starts."""

    weights: str  # the name or path the user gave
    path: Path | None  # resolved file; None for random-tiny
    labels: str  # a label set name, or the class names of a custom-trained model joined by commas
    landmark_path: Path | None  # S2D's landmark branch (None: face-api's net has none)
    warning: str | None = None
    trust: bool = False  # the file may hold pickled code (the user said they trust it)
    config: str = "s2d_tiny"  # the model configuration (s2d_model.CONFIGS), or "faceapi-expression"
    kind: str = "video"  # S2DVideo (16-frame clips), or "image": S2DImage (one aligned face)
    crop: Crop = OUR_CROP  # the face crop it was trained on: the face actor cuts this
    frame_order: str = "time"  # a clip's frames in time order, or as the authors' reader listed them

    @property
    def class_names(self) -> tuple[str, ...]:
        from s2d_model import LABEL_SETS, labels

        return labels(self.labels) if self.labels in LABEL_SETS else tuple(n.strip() for n in self.labels.split(","))

    @property
    def fingerprint(self) -> dict:
        from .cache import file_fingerprint

        found = {"weights": self.weights, "file": file_fingerprint(self.path, sha256=False) if self.path else None,
                 "labels": self.labels,
                 "landmark_file": file_fingerprint(self.landmark_path) if self.landmark_path else None}
        if self.per_frame:  # the tfjs manifest's binary too
            from s2d_model.faceapi import data_files

            found["data_files"] = [file_fingerprint(p, sha256=False) for p in data_files(self.path)]
        return found

    @property
    def per_frame(self) -> bool:
        """A per-frame classifier (face-api's expression net): a clip's face frames are classified one by one."""
        return self.config == FACEAPI

    @property
    def input(self) -> dict:
        """What the model is fed: its crop and (a video model's) frame order; in the settings hash, manifest and
        timeline metadata."""
        return {"crop": str(self.crop), "frame_order": self.frame_order if self.kind == "video" else None}


DEFAULT_LABELS_BY_CLASSES = {"video": {7: "dfew", 11: "mafw"}, "image": {7: "affectnet7", 8: "affectnet8"}}
HEAD = {"video": "head.fc_cls.weight", "image": "head.weight"}  # the classifier's weight in each kind's state dict


def resolve_classifier(weights: str = "s2d-dfew", labels: str | None = None,
                       landmark_weights: str | None = None, trust: bool = False, kind: str = "video",
                       crop: str | None = None, frame_order: str | None = None) -> Classifier:
    """Resolve the classifier and landmark weights (WeightsNotFound with instructions if missing), open the
    checkpoint and check it is of ``kind`` (a CheckpointError or ValueError now, not inside an actor), and choose
    the label set: ``labels`` if given (a label-set name or class names ``a,b,c``), else the registry's entry, else
    what our own checkpoint records (its label set, or its class names), else by class count. The crop and frame
    order: ``crop`` / ``frame_order`` if given, else the registry's entry, else what our checkpoint records, else
    ``OUR_CROP`` in time order. face-api's expression net (``faceapi-expression`` or a path to its weights
    manifest) is read and checked whole here."""
    from s2d_model.labels import LABEL_SETS
    from s2d_model.weights import KNOWN, resolve

    given = {"crop": parse_crop(crop) if crop else None, "frame_order": check_order(frame_order) if frame_order else None}
    spec = KNOWN.get(weights)
    if is_faceapi(weights):
        return faceapi_classifier(weights, resolve(weights), labels, kind, given, KNOWN[FACEAPI])
    landmark_path = resolve(landmark_weights or "mobilefacenet")
    if weights == RANDOM_TINY:
        warning, default = (UNTRAINED_WARNING, "dfew") if kind == "video" else (IMAGE_WARNING, "affectnet7")
        return Classifier(weights, None, labels or default, landmark_path, warning, config="s2d_tiny", kind=kind,
                          crop=given["crop"] or OUR_CROP, frame_order=given["frame_order"] or "time")
    path = resolve(weights)
    from s2d_model.checkpoints import CheckpointError, infer_config, read_file, split_file  # torch: to read it

    fmt, sd, meta = split_file(read_file(path, trust), path)
    found = meta.get("kind") or ("image" if fmt == "image" else "video")
    if found != kind or HEAD[kind] not in sd:
        need = "the dynamic stage's weights (--weights)" if kind == "video" else \
            "the static stage's image-model weights (--image-weights)"
        raise CheckpointError(f"{path}: not an S2D {kind} model checkpoint ({fmt} layout, no '{HEAD[kind]}'); "
                              f"annotate needs {need}")
    n = sd[HEAD[kind]].shape[0]
    if labels is None:
        custom = ",".join(meta.get("label_names") or [])  # our checkpoint of a model trained on own classes
        labels = (spec.labels if spec is not None and spec.labels else None) or meta.get("labels") or custom or \
            DEFAULT_LABELS_BY_CLASSES[kind].get(n)
        if not labels:
            raise ValueError(f"{path}: {n} classes; pass the label set (--labels) explicitly")
    if labels not in LABEL_SETS and "," not in labels:
        raise ValueError(f"unknown label set '{labels}': choose one of {', '.join(LABEL_SETS)}, or name the classes "
                         "in order, separated by commas")
    crop = given["crop"] or parse_crop((spec and spec.crop) or meta.get("crop") or OUR_CROP)
    order = given["frame_order"] or (spec and spec.frame_order) or meta.get("frame_order") or "time"
    c = Classifier(weights, path, labels, landmark_path, trust=trust, config=meta.get("config") or infer_config(sd),
                   kind=kind, crop=crop, frame_order=order)
    if len(c.class_names) != n:
        raise ValueError(f"{path}: the checkpoint has {n} classes, but label set '{labels}' has "
                         f"{len(c.class_names)}")
    return c


def is_faceapi(weights: str) -> bool:
    """Names face-api's expression net (its registry name, or a path to its tfjs weights manifest)."""
    return weights == FACEAPI or str(weights).endswith("-weights_manifest.json")


def faceapi_classifier(weights: str, path: Path, labels: str | None, kind: str, given: dict, spec) -> Classifier:
    """face-api's expression net as a classifier of ``kind``: its files read and checked now (WeightsFileError naming
    the file), its 7 classes under the DFEW names, one frame at a time (so the frame order does not matter)."""
    from s2d_model.faceapi import load_expression_net

    if labels not in (None, "dfew"):
        raise ValueError(f"{weights}: face-api's expression net gives the 7 DFEW classes; --labels must be dfew, "
                         f"not '{labels}'")
    load_expression_net(path)
    crop = given["crop"] or parse_crop(spec.crop)
    return Classifier(weights, path, "dfew", None, config=FACEAPI, kind=kind, crop=crop, frame_order="time")


def build_model(c: Classifier):
    """The S2DVideo (or S2DImage, by ``c.kind``) for a resolved classifier, landmark branch loaded, in eval mode,
    for inference: the frozen landmark branch has its BatchNorms folded into the convolutions and runs channels_last
    (the same outputs up to float rounding; a tiny clip's 16 landmark passes on 2 cores 101 -> 69 ms, most of a
    tiny clip's time)."""
    import torch

    import s2d_model as S

    from .retinaface import fuse_conv_bn, onednn_pointwise

    if c.per_frame:
        from s2d_model.faceapi import load_expression_net
        from s2d_model.weights import resolve

        return load_expression_net(resolve(c.weights) if storage.is_uri(c.weights) else c.path)
    if c.path is None:  # the same random weights every time, the process's own RNG left as it was
        create = S.create_model if c.kind == "video" else S.create_image_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create("s2d_tiny", len(c.class_names))
        S.load_landmark_weights(model, c.landmark_path)
    else:
        from s2d_model.weights import resolve

        path = resolve(c.weights) if storage.is_uri(c.weights) else c.path  # an object: this node's own copy
        model, _ = S.load_model(path, c.landmark_path, c.trust, kind=c.kind)
        if model.num_classes != len(c.class_names):
            raise ValueError(f"{c.path}: {model.num_classes} classes, but label set '{c.labels}' has "
                             f"{len(c.class_names)}")
    model.eval()
    model.landmark = onednn_pointwise(fuse_conv_bn(model.landmark).to(memory_format=torch.channels_last))
    return model


def tiny(c: Classifier) -> bool:
    """A small model (the tiny test S2D, face-api's expression net): clips of ~30 ms, run one forward at a time on
    every thread."""
    return c.config in ("s2d_tiny", FACEAPI)


class LandmarkCache:
    """The frozen landmark branch's features of aligned frames, each frame computed once. Overlapping windows
    (2 s segments, 1 s stride) share half their frames, and in a tiny model that branch is most of a clip's time
    (16 MobileFaceNet passes). A frame is known by the SHA-1 of its pixels; the last ``size`` frames are kept (on
    the model's device: 100 KB each). Called from several lanes at once: the features are computed outside the
    lock, the table is read and updated inside it."""

    def __init__(self, model, size: int = 512):
        self.model, self.size, self.features = model, size, {}
        self.lock = threading.Lock()
        self.computed = self.reused = 0

    def __call__(self, frames: np.ndarray, clips):
        """frames uint8 [N = B*T, H, W, 3] (C-contiguous), clips: the same normalised [B, 3, T, H, W] ->
        [N, 128, 14, 14]. Only the new frames are gathered from ``clips`` (the model reshapes the rest itself)."""
        import hashlib

        import torch

        keys = [hashlib.sha1(f, usedforsecurity=False).digest() for f in frames]
        with self.lock:
            have = {k: self.features[k] for k in keys if k in self.features}
        new = [i for i, k in enumerate(keys) if k not in have and keys.index(k) == i]
        if new:
            t = clips.shape[2]
            images = torch.stack([clips[i // t, :, i % t] for i in new])  # [n, 3, H, W]
            have.update(zip([keys[i] for i in new], self.model.landmark_features(images)))
        with self.lock:
            for i in new:
                self.features[keys[i]] = have[keys[i]]
            for k in list(self.features)[:max(0, len(self.features) - self.size)]:  # oldest first (insertion order)
                del self.features[k]
            self.computed += len(new)
            self.reused += len(keys) - len(new)
        return torch.stack([have[k] for k in keys])


def watch_cpu(samples) -> None:
    """In a background thread, every 0.25 s: (time, the node's busy jiffies, this process's) appended to the deque
    ``samples()`` (a weak reference: the thread ends with its worker), for ``follow_load``. Ends at once where
    there is no /proc (not Linux): the threads stay as they are."""
    while True:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                s = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return
        d = samples()
        if d is None:
            return
        d.append((time.monotonic(), sum(v) - v[3] - v[4], int(s[11]) + int(s[12])))
        del d
        time.sleep(0.25)


def free_threads(samples: list, most: int, hz: int) -> int | None:
    """Torch threads for the S2D actor on CPU: ``most`` less one per core other processes kept busy over the
    samples' span (``watch_cpu``'s, jiffies at ``hz`` per second; rounded to whole cores), at least one. None when
    the samples span under 0.5 s (too little to tell)."""
    if len(samples) < 2 or samples[-1][0] - samples[0][0] < 0.5:
        return None
    (t0, busy0, own0), (t1, busy1, own1) = samples[0], samples[-1]
    others = ((busy1 - busy0) - (own1 - own0)) / hz / (t1 - t0)
    return max(1, min(most, most - int(others + 0.5)))


def follow_load(samples, most: int) -> None:
    """torch.set_num_threads(free_threads(...)) when that differs: before each batch and before each ViT block, so
    the cores the face actors leave come back within a block, not a clip (a ViT-B clip on one thread is ~9 s on the
    2-core machine, and the face actor ends or pauses mid-clip)."""
    import os

    import torch

    n = free_threads(list(samples), most, os.sysconf("SC_CLK_TCK"))
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)


class S2DWorker:
    """Ray Data callable: rows {"item": Clip | UnitFaces} -> the same rows, each clip's ``probs`` (float32 [C]) set
    and its pixels dropped; other items pass through. The batch's clips go through the model ``batch_size`` at a
    time, normalised (ImageNet mean/std) on the device; bf16 autocast on CUDA. ``threads``: the node's cores this
    actor uses (it reserves one CPU but uses every core the face actors leave idle). On CPU, a real model's
    (ViT-B's) clips go through ``lanes``: that many threads, each classifying its own contiguous share of the batch
    with one intra-op thread (torch releases the GIL), sharing the model, so no core waits at an OpenMP barrier for
    another that the face actors or Ray's daemons took for a moment. Fewer batches than lanes left: those go one at
    a time with every thread. Measured on 2 cores, base model: bench d's 79 clips back to back in one session,
    355.4 s with one 2-thread forward at a time, 324.7 s with 2 lanes; 29 clips, clips/s once the face work was
    done: 0.202-0.223 against 0.238. The tiny model's clips (~30 ms, mostly Python dispatch and the landmark branch,
    whose cache two lanes would split) go one forward at a time on every thread, one thread fewer per core other
    processes kept busy over the last second, checked before each batch and each ViT block (``follow_load``), so
    that it does not run more threads than free cores while faces are found (the base model, before lanes: 262 s
    -> 221 s end to end). One-frame clips
    (a still image's faces) go to the ``image`` classifier's model. The first model (the video one if the run has
    it) starts loading in a background thread when the actor starts; the other loads with its first clips (a run of
    videos only never loads the image model; either classifier may be None when the run has none of it)."""

    def __init__(self, classifier: Classifier | None, device: str = "cpu", batch_size: int = 8, threads: int = 1,
                 image: Classifier | None = None):
        self.classifiers = {"video": classifier, "image": image}
        self.device_name, self.batch_size, self.threads = device, batch_size, threads
        self.device, self.models, self.lock = None, {}, threading.Lock()
        self.lanes = max(1, threads) if device == "cpu" else 1  # for a real model; the tiny one: 1
        self.pool = None  # the lanes' threads, made with the first batch that has a share for each
        self.samples = collections.deque(maxlen=5)  # watch_cpu's, for follow_load: (time, node busy, own busy jiffies)
        self.watching = self.lanes > 1 and any(c is not None and tiny(c) for c in (classifier, image))
        if self.watching:  # the tiny model's threads follow the node's load: watch_cpu, follow_load
            threading.Thread(target=watch_cpu, args=(weakref.ref(self.samples),), daemon=True,
                             name="s2d-watch").start()
        first = "video" if classifier is not None else "image" if image is not None else None
        if first is not None:  # built while the face actors start: the first clips find it ready
            threading.Thread(target=self.preload, args=(first,), daemon=True, name="s2d-load").start()

    def preload(self, kind: str) -> None:
        """``load(kind)`` in the background from the start. Measured on 2 cores (single_face.mp4, random-tiny, 3 runs
        each, alternating with the model loaded by the first clip): the first timeline 8.0-9.2 s after the call
        instead of 9.4-10.8 s; the first face 3.7-3.9 s after Ray is up instead of 3.3-3.5 s (the two share the
        cores); the README example 12.0-12.4 s instead of 13.8-15.1 s. If it fails, the first clip loads again and
        raises."""
        try:
            self.load(kind)
        except Exception:
            pass

    def load(self, kind: str):
        """The model of ``kind`` ("video" or "image"), built once (torch set up before its first import)."""
        with self.lock:  # the background load and a first clip: one builds it, the other waits
            if kind in self.models:
                return self.models[kind]
            c = self.classifiers[kind]
            if c is None:
                raise ValueError(f"a clip for the {kind} model, but the run has no {kind} weights")
            from .cluster import torch_threads

            torch = torch_threads(self.threads, sleep=c.config == "s2d_tiny")
            if self.device is None:
                from s2d_model import IMAGENET_MEAN, IMAGENET_STD

                self.device = torch.device(self.device_name)
                self.mean = torch.tensor(IMAGENET_MEAN, device=self.device)
                self.std = torch.tensor(IMAGENET_STD, device=self.device)
                self.flat = {}  # (h, w) -> the mean and std repeated over an [h, w, 3] frame, flat
            model = build_model(c).to(self.device)
            if self.watching and tiny(c):  # and between blocks: the cores come back mid-clip
                for block in getattr(model, "blocks", ()):
                    block.register_forward_pre_hook(lambda *_, s=self.samples, n=self.threads: follow_load(s, n))
            if kind == "video" and not c.per_frame:
                self.landmarks = LandmarkCache(model)
            self.models[kind] = model
            return model

    def probabilities(self, clips: np.ndarray, slots: list | None = None) -> np.ndarray:
        """uint8 [B, T, H, W, 3] in time order -> float32 [B, C]; T = 1: the image model's. ``slots``: per clip, the
        slots whose frames a per-frame model classifies (its distinct face frames; default all)."""
        b, t = clips.shape[:2]
        kind = "image" if t == 1 else "video"
        model = self.load(kind)  # first: torch_threads before anything imports torch
        import torch

        c = self.classifiers[kind]
        if c.per_frame:
            return self.frame_by_frame(model, clips, slots)
        if c.frame_order != "time":  # the order its training clips were read in
            clips = clips[:, frame_permutation(c.frame_order, t)]
        clips = np.ascontiguousarray(clips)
        h, w = clips.shape[2:4]
        if (h, w) not in self.flat:
            self.flat[h, w] = self.mean.repeat(h * w), self.std.repeat(h * w)
        mean, std = self.flat[h, w]
        x = torch.from_numpy(clips).to(self.device, non_blocking=True).float().div_(255.0)  # [B, T, H, W, 3] in [0, 1]
        # normalised in flat passes over each frame (a [3] broadcast over the channel-last pixels is ~5x slower)
        x = x.view(b * t, -1).sub_(mean).div_(std).view(clips.shape).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if t == 1:
                logits = model(x[:, :, 0])
            else:
                landmark = self.landmarks(clips.reshape(b * t, *clips.shape[2:]), x)
                logits = model.forward_head(model.forward_features(x, landmark))[0]
        return logits.float().softmax(-1).cpu().numpy()

    def frame_by_frame(self, model, clips: np.ndarray, slots: list | None) -> np.ndarray:
        """face-api's net on each clip's face frames, its probabilities averaged per clip, in DFEW order."""
        import torch

        from s2d_model.faceapi import to_input

        slots = slots or [np.arange(clips.shape[1])] * len(clips)
        frames = np.concatenate([clip[s] for clip, s in zip(clips, slots)])  # [n, H, W, 3]
        with torch.inference_mode():
            probs = model(to_input(frames).to(self.device)).float().softmax(-1).cpu().numpy()
        ends = np.cumsum([len(s) for s in slots])[:-1]
        return np.stack([p.mean(0) for p in np.split(probs, ends)])[:, FACEAPI_TO_DFEW].astype(np.float32)

    def classify(self, part: list) -> None:
        """One batch of clips: each clip's probabilities set, its pixels dropped, its share of the time noted."""
        from .cluster import node_id

        t = time.perf_counter()
        slots = [np.unique(c.segment.frame_index, return_index=True)[1] for c in part]  # distinct face frames
        probs = self.probabilities(np.stack([c.pixels for c in part]), slots)
        for c, pr in zip(part, probs):
            c.probs, c.pixels, c.s2d_seconds, c.node = pr, None, (time.perf_counter() - t) / len(part), node_id()

    def lane(self, parts: list) -> None:
        """One lane's share of a batch (in a lane's thread: one intra-op thread, set when the thread started)."""
        for part in parts:
            self.classify(part)

    def __call__(self, batch: dict) -> dict:
        from .units import Clip

        clips = [c for c in batch["item"] if isinstance(c, Clip) and c.pixels is not None]
        groups: dict[int, list] = {}  # by frame count: images' one-frame clips apart from the videos'
        for c in clips:
            groups.setdefault(len(c.pixels), []).append(c)
        for frames, same in sorted(groups.items()):
            kind = "image" if frames == 1 else "video"
            self.load(kind)  # not counted in s2d_seconds
            parts = [same[i:i + self.batch_size] for i in range(0, len(same), self.batch_size)]
            k = 1 if tiny(self.classifiers[kind]) else self.lanes
            n = len(parts) - len(parts) % k if k > 1 else 0  # parts that give every lane the same share
            if n:
                if self.pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    from .cluster import torch_threads

                    self.pool = ThreadPoolExecutor(k, thread_name_prefix="s2d-lane", initializer=torch_threads,
                                                   initargs=(1,))
                list(self.pool.map(self.lane, [parts[i * n // k:(i + 1) * n // k] for i in range(k)]))
            if n < len(parts):  # the rest (fewer than the lanes; with one lane, all), one at a time, every thread
                if k > 1:
                    import torch

                    torch.set_num_threads(self.threads)
                for part in parts[n:]:
                    follow_load(self.samples, self.threads)  # the tiny model's threads (no samples: as they are)
                    self.classify(part)
        return batch
