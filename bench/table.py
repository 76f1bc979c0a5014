"""What the bench scripts share: the table they print (rows {section, item, value, unit, ratio, vs, detail}, a
blank line between sections) and the atomic writer of their cached inputs. Imported as ``from table import ...``
(the scripts run as ``python bench/<name>.py``)."""
from __future__ import annotations

import os
from pathlib import Path


def cached_file(path: Path, write) -> Path:
    """``path`` if it exists and is not empty; else ``write(tmp)`` and rename, so an interrupted run never leaves a
    half file in the cache."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_table(rows: list) -> None:
    head = ("section", "what", "value", "unit", "ratio", "vs", "detail")
    cells = [(r["section"], r["item"], fmt(r["value"]), r["unit"],
              f"{r['ratio']:.3g}x" if r.get("ratio") is not None else "", r.get("vs", ""), r.get("detail", ""))
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    align = "<<>><<<"

    def line(c):
        return "  ".join(f"{x:{a}{w}}" for x, a, w in zip(c, align, widths)).rstrip()

    print(line(head))
    print("  ".join("-" * w for w in widths))
    prev = None
    for r, c in zip(rows, cells):
        if prev is not None and r["section"] != prev:
            print()
        prev = r["section"]
        print(line(c))
