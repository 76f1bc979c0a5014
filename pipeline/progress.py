"""The drivers' progress bar (tqdm)."""
from __future__ import annotations

import sys
import time


class Progress:
    """Videos done of the total, elapsed time, the last video's status, and the video-seconds done so far with their
    rate. No time-left estimate: videos differ in length and long ones are cut into shards that finish out of order,
    so a count-based estimate would mislead."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} videos [{elapsed}{postfix}]")
        self.t0, self.video_s = time.perf_counter(), 0.0

    def done(self, name: str, status: str, duration_s: float | None) -> None:
        self.video_s += duration_s or 0.0
        rate = self.video_s / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{name}: {status}; {self.video_s:.0f} video-s done, {rate:.2f} video-s/s")
        self.bar.update()

    def note(self, line: str) -> None:
        """One line on stderr, above the bar (shown with the bar off too)."""
        say(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def say(line: str) -> None:
    """One line on stderr, above any bar (what a run tells as it goes: a cache entry it redoes)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
