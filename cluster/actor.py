"""One cluster worker: the body of a Ray actor that owns its own genloom Engine (its own cache and
model owner) in folders of its own, on whatever machine Ray placed it.

A prompt runs through the server's own `Worker` code, so its events, history record and error
payloads are exactly those of one machine; here the worker's hub and store are recorders, and what
they record (events, preview frames, the history record, the bytes of every file a node wrote) waits
in an ordered buffer that the dispatcher drains. Nothing here imports Ray: the dispatcher wraps this
class with `ray.remote`.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from ..server.worker import Worker

AREAS = ("output", "temp")  # the folders whose new files travel back to the server


class _Buffer:
    """Ordered items for the dispatcher; `drain` waits a little for the first one."""

    def __init__(self):
        self.items: list = []
        self.cond = threading.Condition()

    def put(self, item) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def drain(self, wait: float) -> list:
        with self.cond:
            if not self.items:
                self.cond.wait(wait)
            items, self.items = self.items, []
            return items


class _Files:
    """Notices the files nodes write in the worker's output and temp folders."""

    def __init__(self, dirs: dict[str, Path]):
        self.dirs = dirs
        self.seen = self._scan()

    def _scan(self) -> dict:
        found = {}
        for kind in AREAS:
            root = self.dirs[kind]
            for path in root.rglob("*"):
                if path.is_file():
                    st = path.stat()
                    found[(kind, path.relative_to(root).as_posix())] = (st.st_mtime_ns, st.st_size)
        return found

    def new(self) -> list[tuple[str, str, bytes]]:
        now = self._scan()
        changed = [k for k, v in now.items() if self.seen.get(k) != v]
        self.seen = now
        return [(kind, rel, (self.dirs[kind] / rel).read_bytes()) for kind, rel in changed]


class _HubRecorder:
    """What the server's Worker calls on its hub; every message goes to the buffer, in order, and the
    files written before an `executed` event go just ahead of it."""

    def __init__(self, buffer: _Buffer, files: _Files):
        self.buffer, self.files = buffer, files

    def listening(self, sid) -> bool:
        return True

    def send_threadsafe(self, sid, event, data) -> None:
        if sid is None and event == "status":
            return  # the server's queue status is the server's to say
        if event == "executed":
            for kind, rel, data_ in self.files.new():
                self.buffer.put(("file", kind, rel, data_))
        self.buffer.put(("event", sid, event, data))

    def send_bytes_threadsafe(self, sid, frame: bytes) -> None:
        self.buffer.put(("bytes", sid, frame))


class _StoreRecorder:
    """What the server's Worker calls on its store: `finish` becomes the history record to store."""

    def __init__(self, buffer: _Buffer, files: _Files):
        self.buffer, self.files = buffer, files

    def remaining(self) -> int:
        return 0

    def finish(self, prompt_id, status, outputs, meta, messages, error=None) -> None:
        for kind, rel, data in self.files.new():
            self.buffer.put(("file", kind, rel, data))
        self.buffer.put(("finish", prompt_id, status, outputs, meta, messages, error))


class _Row:
    """The fields of a prompt record that running it needs."""

    def __init__(self, prompt_id, client_id, prompt, extra_data, outputs_to_execute):
        self.id, self.client_id, self.prompt = prompt_id, client_id, prompt
        self.extra_data, self.outputs_to_execute = extra_data, outputs_to_execute


@contextmanager
def run_errors():
    """Yields {"outputs", "error"} for one run to fill; a failed run's error payload lands in it."""
    from ..engine.errors import ExecutionError, WorkflowError

    outcome = {"outputs": {}, "error": None}
    try:
        yield outcome
    except WorkflowError as exc:
        problems = [f"node {node}: {e.get('message')} ({e.get('details')})"
                    for node, errs in (exc.node_errors or {}).items() for e in errs.get("errors", ())]
        outcome["error"] = {"exception_type": "WorkflowError", "node_errors": exc.node_errors,
                            "exception_message": "; ".join([str(exc.error.get("message", exc)), *problems])}
    except ExecutionError as exc:
        outcome["error"] = dict(exc.payload)


class EngineWorker:
    """A Ray actor's class (wrapped by the dispatcher). `plugins` are the server's plugin folders as
    {folder index: {relative path: bytes}}, unpacked here, so the workers need no shared file system."""

    def __init__(self, name: str, plugins: dict, models_dirs: list[str] | None, cache: str, device: str,
                 env: dict[str, str], options: dict | None = None):
        os.environ.update(env)
        from ..runtime import Engine, build_registry

        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"genloom-{name}-"))
        plugin_dirs = []
        for index, files in sorted(plugins.items()):
            folder = self.root / "plugins" / str(index)
            for rel, data in files.items():
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            plugin_dirs.append(folder)
        self.dirs = {kind: self.root / kind for kind in ("input", "output", "temp")}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.engine = Engine(registry=build_registry(plugin_dirs), cache=cache, device=device,
                             models_dirs=models_dirs, input_dir=self.dirs["input"],
                             output_dir=self.dirs["output"], temp_dir=self.dirs["temp"])
        self.engine.options.update(options or {})  # the server's or CLI's limits hold on the workers too
        self.device = device
        self.buffer = _Buffer()
        self.files = _Files(self.dirs)
        self.worker = Worker(self.engine, _StoreRecorder(self.buffer, self.files),
                             _HubRecorder(self.buffer, self.files))

    def info(self) -> dict:
        """Who and where this worker is, and its device and memory."""
        from ..server.engine_service import EngineService

        pages = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), "platform": platform.platform(),
                "package": str(Path(__file__).resolve().parents[1]),  # where its genloom came from
                "ram_total": pages * os.sysconf("SC_PHYS_PAGES") if pages else 0,
                "ram_free": pages * os.sysconf("SC_AVPHYS_PAGES") if pages else 0,
                "devices": EngineService(self.engine, self.device).devices(),
                "problems": [p.get("message", "") for p in self.engine.registry.problems]}

    def put_inputs(self, files: dict[str, bytes]) -> None:
        """Input files a prompt names (uploaded to the server) land in this worker's input folder."""
        for rel, data in files.items():
            target = self.dirs["input"] / rel
            if not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def run(self, prompt_id: str, client_id, prompt: dict, extra_data: dict, outputs: list) -> set:
        """Run one prompt; its messages wait in the buffer, ending with ("done",). Returns the keys
        the cache holds afterwards (the dispatcher's affinity)."""
        row = _Row(prompt_id, client_id, prompt, extra_data, outputs)
        self.worker.running_id = prompt_id
        try:
            self.worker._run(row)
        finally:
            self.worker.running_id = None
            self.buffer.put(("done",))
        return self.engine.cache_keys()

    def drain(self, wait: float = 0.2) -> list:
        return self.buffer.drain(wait)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        if self.worker.interrupt(prompt_id):
            return True
        if prompt_id is None:
            return False
        # The dispatcher gave this prompt to us but its run has not begun on this actor's thread yet:
        # the worker applies the interrupt when the engine starts it (Worker._on_start).
        with self.worker._lock:
            self.worker._interrupted_id = prompt_id
        return True

    def free(self) -> None:
        self.engine.free()

    def cache_keys(self) -> set:
        return self.engine.cache_keys()

    def run_headless(self, prompt: dict, extra_data: dict | None, inputs: dict[str, bytes]) -> dict:
        """One run of `genloom run` (with the input files it names): the UI outputs, the files the run
        wrote, or the error."""
        self.put_inputs(inputs)
        for d in (self.dirs["output"], self.dirs["temp"]):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.files.seen = {}
        with run_errors() as outcome:
            result = self.engine.run(prompt, extra_data=extra_data)
            outcome.update(outputs=result.outputs, error=result.errors[0] if result.errors else None)
        return {**outcome, "files": self.files.new()}
