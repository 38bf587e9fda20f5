"""Files that workers wrote, landed in the server's output and temp folders as bytes (the workers
share no file system with the server), and the UI payloads that name them.

Two workers count their file names from their own folders, so both may write `ComfyUI_00001_.png`;
the second to land gets the next free name, and every payload that worker sends (including the ones
its cache serves later) is rewritten to the name the file has on the server.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

_COUNTER = re.compile(r"^(?P<stem>.*_)(?P<n>\d{5})(?P<tail>_?\.[^.]+)$")


def _free_name(root: Path, rel: str) -> str:
    path = Path(rel)
    m = _COUNTER.match(path.name)
    n = int(m["n"]) if m else 0
    while True:
        n += 1
        name = f"{m['stem']}{n:05}{m['tail']}" if m else f"{path.stem}_{n}{path.suffix}"
        candidate = (path.parent / name).as_posix()
        if not (root / candidate).exists():
            return candidate


class Landing:
    def __init__(self, dirs: dict[str, Path]):
        self.dirs = {kind: Path(d) for kind, d in dirs.items()}
        self.names: dict[tuple, str] = {}  # (worker, kind, name on the worker) -> name on the server
        self._lock = threading.Lock()

    def land(self, worker: str, kind: str, rel: str, data: bytes) -> str:
        """Write one file; returns its path relative to the server's folder of that kind."""
        root = self.dirs[kind].resolve()
        with self._lock:
            rel_here = self.names.get((worker, kind, rel), rel)
            target = (root / rel_here).resolve()
            if not target.is_relative_to(root):
                raise ValueError(f"worker {worker} sent a file outside its {kind} folder: {rel!r}")
            if target.exists() and (worker, kind, rel) not in self.names and target.read_bytes() != data:
                rel_here = _free_name(root, rel)
                target = root / rel_here
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            self.names[(worker, kind, rel)] = rel_here
            return rel_here

    def patch(self, worker: str, value):
        """`value` with every {filename, subfolder, type} item renamed to its name on the server."""
        if isinstance(value, list):
            return [self.patch(worker, v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: self.patch(worker, v) for k, v in value.items()}
        if isinstance(out.get("filename"), str) and out.get("type") in self.dirs:
            sub = out.get("subfolder") or ""
            rel = f"{sub}/{out['filename']}" if sub else out["filename"]
            here = self.names.get((worker, out["type"], rel))
            if here is not None and here != rel:
                parent, _, name = here.rpartition("/")
                out["filename"], out["subfolder"] = name, parent
        return out

    def forget(self, worker: str) -> None:
        """A restarted worker starts with empty folders and an empty cache."""
        with self._lock:
            for key in [k for k in self.names if k[0] == worker]:
                del self.names[key]
