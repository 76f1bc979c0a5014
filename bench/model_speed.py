"""S2D model speed: clips/s and peak memory per configuration, fp32 vs bf16, batch 1 vs 8, landmark share.

    python bench/model_speed.py [--device cpu|cuda] [--models s2d_tiny s2d_base_patch16_224] [--batches 1 8]

Each row runs in a fresh child process so that its peak memory (CPU: peak RSS growth over the process
after imports; CUDA: torch.cuda.max_memory_allocated) is its own. Times are medians per call. `ratio` is clips/s over the fp32 row of
the same model and batch, measured in this same run. `landmark %` is the share of the forward spent in the
frozen MobileFaceNet branch (timed alone on the same frames).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time


def _time(fn, min_seconds: float, min_iters: int, sync) -> float:
    """Median seconds per call (after a warm-up call), over at least ``min_iters`` calls and ``min_seconds``."""
    fn()  # warm-up
    sync()
    times, start = [], time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _run(model_name: str, batch: int, dtype: str, device: str, min_seconds: float, queue) -> None:
    import torch

    import s2d_model as S

    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = S.create_model(model_name, 7).eval().to(device)
    clip = torch.randn(batch, 3, 16, 224, 224, device=device)
    frames = clip.transpose(1, 2).reshape(-1, 3, 224, 224)
    use_bf16 = dtype == "bf16"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
            model(clip)

    def landmark():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
            model.landmark_features(frames)

    per_call = _time(forward, min_seconds, 3, sync)
    lm = _time(landmark, min_seconds, 3, sync)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB
    queue.put(dict(model=model_name, batch=batch, dtype=dtype, clips_s=batch / per_call,
                   ms_clip=1000 * per_call / batch, peak_mib=peak, landmark_pct=100 * lm / per_call))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--models", nargs="+", default=["s2d_tiny", "s2d_base_patch16_224"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--min-seconds", type=float, default=3.0, help="time each row at least this long")
    args = ap.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"S2D model speed on {name}, torch {torch.__version__}, 16-frame 224px clips\n")
    ctx = mp.get_context("spawn")
    rows = []
    for model_name in args.models:
        for batch in args.batches:
            for dtype in args.dtypes:
                q = ctx.Queue()
                p = ctx.Process(target=_run, args=(model_name, batch, dtype, device, args.min_seconds, q))
                p.start()
                p.join()
                if p.exitcode != 0:
                    print(f"{model_name} b{batch} {dtype}: failed (exit {p.exitcode})")
                    continue
                rows.append(q.get())
    header = f"{'model':22s} {'batch':>5s} {'dtype':>5s} {'clips/s':>9s} {'ms/clip':>9s} {'ratio':>6s} " \
             f"{'peak MiB':>9s} {'landmark %':>10s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["batch"] == r["batch"]
                     and b["dtype"] == "fp32"), r)
        print(f"{r['model']:22s} {r['batch']:5d} {r['dtype']:>5s} {r['clips_s']:9.3f} {r['ms_clip']:9.1f} "
              f"{r['clips_s'] / base['clips_s']:6.2f} {r['peak_mib']:9.0f} {r['landmark_pct']:10.1f}")


if __name__ == "__main__":
    main()
