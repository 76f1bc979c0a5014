"""The S2D actor: batches of aligned uint8 clips -> class probabilities.

Videos' 16-frame clips go to the video model, a still image's faces (one-frame clips) to the image model, face-api's
expression net classifies a clip's face frames one by one (``classifier.py`` says which weights a run uses)."""
from __future__ import annotations

import threading
import time

import numpy as np

from .classifier import FACEAPI, FACEAPI_TO_DFEW, Classifier, build_model
from .crops import frame_permutation


def tiny(c: Classifier) -> bool:
    """A small model (the tiny test S2D, face-api's expression net): its clips are short and mostly Python dispatch
    and the landmark branch (whose cache lanes would split), so they run one forward at a time on every thread."""
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


class S2DWorker:
    """Ray Data callable: rows {"item": Clip | UnitFaces} -> the same rows, each clip's ``probs`` (float32 [C]) set
    and its pixels dropped; other items pass through. The batch's clips go through the model ``batch_size`` at a
    time, normalised (ImageNet mean/std) on the device, in the classifier's precision for the device (bf16:
    autocast; int8: the model's Linear layers quantised when it loads, ``precision.quantize``; a video model's
    landmark branch stays fp32 on a CPU). ``threads``: the node's cores this
    actor uses (it reserves one CPU but uses the cores the face actors leave idle).

    On CPU a real model's clips go through ``lanes``: that many threads, each classifying its own contiguous share
    of the batch with one intra-op thread (torch releases the GIL), sharing the model, so that no core waits at an
    OpenMP barrier for another that the face actors took for a moment. Batches left over (fewer than the lanes), and
    a tiny model's (``tiny``), go one forward at a time with every thread.

    ``classifier`` is the video model's, ``image`` the image model's; either may be None when the run has none of
    it. The first model starts loading in a background thread when the actor starts; the other loads with its
    first clips (a run of videos only never loads the image model)."""

    def __init__(self, classifier: Classifier | None, device: str = "cpu", batch_size: int = 8, threads: int = 1,
                 image: Classifier | None = None):
        self.classifiers = {"video": classifier, "image": image}
        self.device_name, self.batch_size, self.threads = device, batch_size, threads
        self.device, self.models, self.lock = None, {}, threading.Lock()
        self.lanes = max(1, threads) if device == "cpu" else 1  # for a real model; a tiny one: 1
        self.pool = None  # the lanes' threads, made with the first batch that has a share for each
        first = "video" if classifier is not None else "image" if image is not None else None
        if first is not None:  # built while the face actors start: the first clips find it ready
            threading.Thread(target=self.preload, args=(first,), daemon=True, name="s2d-load").start()

    def preload(self, kind: str) -> None:
        """``load(kind)`` in the background from the start. If it fails, the first clip loads again and raises."""
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
                from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

                self.device = torch.device(self.device_name)
                self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=self.device)
                self.std = torch.tensor(IMAGENET_DEFAULT_STD, device=self.device)
                self.flat = {}  # (h, w) -> the mean and std repeated over an [h, w, 3] frame, flat
            model = build_model(c).to(self.device)
            if c.used[self.device.type] == "int8":
                from .precision import quantize

                model = quantize(model)
            if kind == "video" and not c.per_frame:
                self.landmarks = LandmarkCache(model)
            self.models[kind] = model
            return model

    def probabilities(self, clips: np.ndarray, slots: list | None = None) -> np.ndarray:
        """uint8 [B, T, H, W, 3] in time order -> float32 [B, C]; T = 1: the image model's. ``slots``: per clip, the
        slots whose frames a per-frame model classifies (its distinct face frames; default all)."""
        c = self.classifiers["image" if clips.shape[1] == 1 else "video"]
        if c is not None and c.per_frame:
            model = self.load("image" if clips.shape[1] == 1 else "video")
            return self.frame_by_frame(model, clips, slots, c.used[self.device.type] == "bf16")
        return self.logits(clips).softmax(-1).cpu().numpy()

    def logits(self, clips: np.ndarray):
        """An S2D model's logits (a float32 tensor [B, C] on the device) of uint8 clips [B, T, H, W, 3] in time
        order, in the classifier's precision."""
        b, t = clips.shape[:2]
        kind = "image" if t == 1 else "video"
        model = self.load(kind)  # first: torch_threads before anything imports torch
        import torch

        c = self.classifiers[kind]
        bf16, gpu = c.used[self.device.type] == "bf16", self.device.type == "cuda"
        if c.frame_order != "time":  # the order its training clips were read in
            clips = clips[:, frame_permutation(c.frame_order, t)]
        clips = np.ascontiguousarray(clips)
        h, w = clips.shape[2:4]
        if (h, w) not in self.flat:
            self.flat[h, w] = self.mean.repeat(h * w), self.std.repeat(h * w)
        mean, std = self.flat[h, w]
        x = torch.from_numpy(clips).to(self.device, non_blocking=True).float().div_(255.0)  # [B, T, H, W, 3] in [0, 1]
        # normalised in flat passes over each frame (faster than a [3] broadcast over the channel-last pixels)
        x = x.view(b * t, -1).sub_(mean).div_(std).view(clips.shape).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
        with torch.inference_mode():
            if t == 1:
                with self.cast(bf16):
                    logits = model(x[:, :, 0])
            else:
                with self.cast(bf16 and gpu):  # the frozen landmark branch: fp32 on a CPU
                    landmark = self.landmarks(clips.reshape(b * t, *clips.shape[2:]), x)
                with self.cast(bf16):
                    logits = model.forward_head(model.forward_features(x, landmark))[0]
        return logits.float()

    def cast(self, bf16: bool):
        """bf16 autocast on the actor's device (``bf16``), else a no-op."""
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def frame_by_frame(self, model, clips: np.ndarray, slots: list | None, bf16: bool = False) -> np.ndarray:
        """face-api's net on each clip's face frames, its probabilities averaged per clip, in DFEW order."""
        import torch

        from s2d_model.faceapi import to_input

        slots = slots or [np.arange(clips.shape[1])] * len(clips)
        frames = np.concatenate([clip[s] for clip, s in zip(clips, slots)])  # [n, H, W, 3]
        with torch.inference_mode(), self.cast(bf16):
            probs = model(to_input(frames).to(self.device)).float().softmax(-1).cpu().numpy()
        ends = np.cumsum([len(s) for s in slots])[:-1]
        return np.stack([p.mean(0) for p in np.split(probs, ends)])[:, FACEAPI_TO_DFEW].astype(np.float32)

    def classify(self, part: list) -> None:
        """One batch of clips: each clip's probabilities set, its pixels dropped, its share of the time noted."""
        from .cluster import node_id

        t = time.perf_counter()
        slots = [np.unique(c.segment.frame_index, return_index=True)[1] for c in part]  # distinct face frames
        probs = self.probabilities(np.stack([c.pixels for c in part]), slots)
        seconds, node = (time.perf_counter() - t) / len(part), node_id()
        for c, pr in zip(part, probs):
            c.probs, c.pixels, c.s2d_seconds, c.node = pr, None, seconds, node

    def lane(self, parts: list) -> None:
        """One lane's share of a batch (in a lane's thread: one intra-op thread, set when the thread started)."""
        for part in parts:
            self.classify(part)

    def in_lanes(self, parts: list, k: int) -> None:
        """``parts`` (a multiple of ``k``) in ``k`` lanes side by side, each its own contiguous share."""
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            from .cluster import torch_threads

            self.pool = ThreadPoolExecutor(k, thread_name_prefix="s2d-lane", initializer=torch_threads, initargs=(1,))
        n = len(parts)
        list(self.pool.map(self.lane, [parts[i * n // k:(i + 1) * n // k] for i in range(k)]))

    def __call__(self, batch: dict) -> dict:
        from .units import Clip

        groups: dict[int, list] = {}  # by frame count: images' one-frame clips apart from the videos'
        for c in batch["item"]:
            if isinstance(c, Clip) and c.pixels is not None:
                groups.setdefault(len(c.pixels), []).append(c)
        for frames, same in sorted(groups.items()):
            kind = "image" if frames == 1 else "video"
            self.load(kind)  # not counted in s2d_seconds
            parts = [same[i:i + self.batch_size] for i in range(0, len(same), self.batch_size)]
            k = 1 if tiny(self.classifiers[kind]) else self.lanes
            shared = len(parts) // k * k if k > 1 else 0  # the parts that give every lane the same share
            if shared:
                self.in_lanes(parts[:shared], k)
            if k > 1 and shared < len(parts):  # the lanes' threads set torch to one thread: every thread again
                import torch

                torch.set_num_threads(self.threads)
            for part in parts[shared:]:  # one forward at a time on this thread
                self.classify(part)
        return batch
