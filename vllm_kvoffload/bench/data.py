"""Reading benchmark jsonl files: one object per line with a string ``problem`` and an ``answer``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def load(path: str | Path, limit: int | None = None,
         check: Callable[[object], str | None] = lambda a: None) -> list[dict]:
    """Samples ``{"id", "prompt", "gold"}``; ``check(answer)`` returns a complaint or None.
    A bad line raises ValueError naming ``path:line``."""
    if not Path(path).is_file():
        raise ValueError(f"--data {path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{no}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("problem"), str) or "answer" not in rec:
                raise ValueError(f"{path}:{no}: expected an object with a string 'problem' and an "
                                 f"'answer', got {line.strip()[:80]!r}")
            if (why := check(rec["answer"])) is not None:
                raise ValueError(f"{path}:{no}: {why}")
            out.append({"id": str(rec.get("id", no)), "prompt": rec["problem"], "gold": rec["answer"]})
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no samples")
    return out
