"""One way to write a file atomically: a temp file in the same folder, fsync, ``os.replace``.

Readers see the old file or the new one, never a part. Used for every output the project writes (cache entries,
timelines, manifests, checkpoints, CSVs, registries).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes to a binary file) to ``path`` atomically.
    Creates the parent folder. The temp file is removed when writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
