"""The one worker thread that runs queued prompts through the engine.

Nodes block (torch, file I/O), so the engine runs on its own thread; its events hop to the aiohttp
loop through the hub. What a prompt did (status messages, UI outputs) is recorded as it happens, so
history holds the outputs of the nodes that ran even when a later node failed. The worker calls the
prompt store directly (it is off the event loop already) and computes the queue status it
broadcasts here, so a status message keeps its place among the prompt's events.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from ..engine.errors import ExecutionError, Interrupted, WorkflowError
from .errors import redact_tree
from .services import PromptStore, now_ms
from .views import status_payload
from .ws import Hub, preview_frame

log = logging.getLogger("genloom.server")

# Events kept in a prompt's history `status.messages`, as ComfyUI keeps them.
_KEPT = ("execution_start", "execution_cached", "execution_success", "execution_error",
         "execution_interrupted")
SHUTDOWN_MESSAGE = "the server was stopped while this prompt was running"
DEFAULT_INTERRUPT_GRACE = 3.0  # seconds a node gets to notice /interrupt before its run is abandoned


class _Recorder:
    """Forwards one prompt's events to its client and remembers what history needs."""

    def __init__(self, hub: Hub, sid: str | None, prompt_id: str, on_start=None):
        self.hub, self.sid, self.prompt_id, self.on_start = hub, sid, prompt_id, on_start
        self.messages: list = []
        self.outputs: dict = {}
        self.meta: dict = {}
        self.nodes: dict = {}  # progress_state
        self.seen: set[str] = set()
        self.engine_sends_progress_state = False
        self.finished = False
        self.detached = False  # the run was abandoned: what it still sends goes nowhere
        self.started: list[str] = []  # nodes that began running, in order

    def __call__(self, event: str, data: dict) -> None:
        if self.detached:
            return
        try:
            self._on(event, data)
        except Exception:  # noqa: BLE001 - a broken event must not kill the run
            log.exception("could not forward event %s", event)

    def _on(self, event: str, data: dict) -> None:
        self.seen.add(event)
        if event == "execution_error":
            data = redact_tree(data)  # no absolute server paths in what clients see
        if event == "preview":
            image = data.get("image")
            if image is not None and self.hub.listening(self.sid):
                self.hub.send_bytes_threadsafe(self.sid, preview_frame(image, data.get("format", "JPEG")))
            return
        if event in _KEPT:
            self.messages.append([event, data])
        if event == "executing" and data.get("node") is not None:
            self.started.append(str(data["node"]))
        if event == "execution_start" and self.on_start is not None:
            self.on_start(self.prompt_id)
        if event == "executed":
            node = str(data.get("node"))
            output = data.get("output")
            if output:
                self.outputs[node] = output
            display = data.get("display_node", node)
            self.meta[node] = {"node_id": node, "display_node": display, "parent_node": None,
                               "real_node_id": display}
        if event == "executing" and data.get("node") is None and not self.finished:
            return  # sent by the worker once the history is stored
        if event == "progress_state":
            self.engine_sends_progress_state = True
        self.hub.send_threadsafe(self.sid, event, data)
        if not self.engine_sends_progress_state:
            self._progress_state(event, data)

    def _progress_state(self, event: str, data: dict) -> None:
        """Derive progress_state (the editor's per-node progress bars) when the engine doesn't send it.
        Each message holds the nodes still running and the ones that just finished; a finished node is
        then dropped, so a message costs what is in flight, not what ran before (a long chain would
        make the events quadratic)."""
        done = []
        if event == "executing":
            done = [k for k, state in self.nodes.items() if state["state"] == "running"]
            for k in done:
                self.nodes[k]["state"] = "finished"
            node = data.get("node")
            if node is not None:
                self.nodes[str(node)] = self._state(str(node), data.get("display_node", node), "running", 0, 1)
            elif not done:
                return
        elif event == "progress" and data.get("node") is not None:
            node = str(data["node"])
            state = self.nodes.setdefault(node, self._state(node, node, "running", 0, 1))
            state["value"], state["max"] = data.get("value", 0), data.get("max", 1)
        elif event == "executed" and data.get("node") is not None:
            node = str(data["node"])
            state = self.nodes.setdefault(node, self._state(node, data.get("display_node", node), "running", 1, 1))
            state["state"], state["value"] = "finished", state["max"]
            done = [node]
        else:
            return
        self.hub.send_threadsafe(self.sid, "progress_state",
                                 {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.nodes.items()}})
        for k in done:
            self.nodes.pop(k, None)

    def _state(self, node, display, state, value, max_):
        return {"value": value, "max": max_, "state": state, "node_id": node, "prompt_id": self.prompt_id,
                "display_node_id": str(display), "parent_node_id": None, "real_node_id": str(display)}

    def send(self, event: str, data: dict) -> None:
        """An event the server itself produces (the engine could not)."""
        self._on(event, data)


class Worker:
    """Claims prompts from the store one at a time and runs them; `wake` and `interrupt` are what the
    routes call (services.Runner), both return at once."""

    def __init__(self, engine, store: PromptStore, hub: Hub, interrupt_grace: float = DEFAULT_INTERRUPT_GRACE):
        self.engine, self.store, self.hub = engine, store, hub
        self.interrupt_grace = interrupt_grace
        self.running_id: str | None = None
        self._interrupted_id: str | None = None
        self._interrupted_at: float | None = None
        self.abandoned: list[threading.Thread] = []  # runs given up on whose node has not returned yet
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genloom-worker", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt (only if it is `prompt_id`, when given)."""
        with self._lock:
            running = self.running_id
            if running is None or (prompt_id is not None and prompt_id != running):
                return False
            if self._interrupted_id != running:
                self._interrupted_id, self._interrupted_at = running, time.monotonic()
            self.engine.interrupt()
            return True

    def _on_start(self, prompt_id: str) -> None:
        """An interrupt that came after the claim but before the engine's run began is applied now
        (the engine clears its flag when a run starts)."""
        with self._lock:
            if self._interrupted_id == prompt_id:
                self.engine.interrupt()

    def stop(self, grace: float) -> bool:
        """Stop taking prompts, interrupt the running one; returns whether the thread ended in time."""
        self._stopping.set()
        self._wake.set()
        self.interrupt()
        self._thread.join(grace)
        if self._thread.is_alive():
            running = self.running_id
            if running is not None:
                self.store.finish(running, "failed", None, None, None,
                                  {"type": "server_stopped", "message": SHUTDOWN_MESSAGE})
            return False
        return not self._stuck()

    def _stuck(self) -> list[threading.Thread]:
        """The abandoned runs whose node still has not returned."""
        self.abandoned = [t for t in self.abandoned if t.is_alive()]
        return self.abandoned

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            row = self.store.claim_next()
            if row is None:
                self._wake.wait(1.0)
                continue
            with self._lock:
                self.running_id = row.id
            try:
                self._run(row)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything a prompt does
                log.exception("prompt %s failed outside the engine", row.id)
                self.store.finish(row.id, "failed", None, None, None,
                                  {"type": "server_error", "message": f"{type(exc).__name__}: {exc}"})
            finally:
                with self._lock:
                    self.running_id = None
                self._broadcast_status()

    def _broadcast_status(self) -> None:
        self.hub.send_threadsafe(None, "status", status_payload(self.store.remaining()))

    def _run(self, row) -> None:
        self._broadcast_status()
        rec = _Recorder(self.hub, row.client_id, row.id, on_start=self._on_start)
        status, error = "completed", None
        try:
            result = self._run_abandonable(row, rec)
            if result is None:  # abandoned: marked interrupted, the queue goes on
                status = "failed" if self._stopping.is_set() else "cancelled"
                error = self._abandoned(row, rec)
                self.store.finish(row.id, status, rec.outputs, rec.meta, rec.messages, error)
                rec.finished = True
                rec.send("executing", {"node": None, "display_node": None, "prompt_id": row.id})
                return
            for node, ui in (result.outputs or {}).items():
                if ui:
                    rec.outputs.setdefault(str(node), ui)
            if result.errors:  # a blocked branch failed while others ran on
                status, error = "failed", dict(result.errors[0])
        except Interrupted:
            status = "failed" if self._stopping.is_set() else "cancelled"
            error = ({"type": "server_stopped", "message": SHUTDOWN_MESSAGE} if self._stopping.is_set()
                     else {"type": "interrupted", "message": "interrupted by the user"})
            if "execution_interrupted" not in rec.seen:
                rec.send("execution_interrupted", {"prompt_id": row.id, "node_id": None, "node_type": None,
                                                   "executed": []})
        except ExecutionError as exc:
            status, error = "failed", dict(exc.payload)
            if "execution_error" not in rec.seen:
                rec.send("execution_error", error)
        except WorkflowError as exc:
            status = "failed"
            error = self._error_payload(row.id, exc.error.get("message", str(exc)) if isinstance(exc.error, dict)
                                        else str(exc), "WorkflowError", "")
            error["node_errors"] = exc.node_errors
            rec.send("execution_error", error)
        except Exception as exc:  # noqa: BLE001 - reported to the client, kept in history
            status = "failed"
            error = self._error_payload(row.id, str(exc), type(exc).__name__, traceback.format_exc())
            rec.send("execution_error", error)
        self.store.finish(row.id, status, rec.outputs, rec.meta, rec.messages, error and redact_tree(error))
        rec.finished = True  # `executing` with node null: finished, and its history is stored
        rec.send("executing", {"node": None, "display_node": None, "prompt_id": row.id})

    def _run_abandonable(self, row, rec):
        """The engine's run on a thread of its own, so that a node that never checks for interrupts
        cannot hold the queue: `interrupt_grace` seconds after /interrupt (or a stop) the run is
        abandoned and None returned. Otherwise the run's result, or its exception re-raised."""
        box: dict = {}

        def target():
            try:
                box["result"] = self.engine.run(row.prompt, outputs=row.outputs_to_execute or None, on_event=rec,
                                                prompt_id=row.id, extra_data=row.extra_data)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the worker's thread
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"genloom-run-{row.id}", daemon=True)
        with self._lock:
            if self._interrupted_id != row.id:
                self._interrupted_at = None
        thread.start()
        while True:
            thread.join(0.05)
            if not thread.is_alive():
                break
            with self._lock:
                if self._interrupted_id == row.id and self._interrupted_at is None:
                    self._interrupted_at = time.monotonic()  # set before the run began
                late = (self._interrupted_id == row.id
                        and time.monotonic() - self._interrupted_at >= self.interrupt_grace)
            if not late:
                continue
            rec.detached = True  # from now on the engine's events for this run go nowhere
            if self.engine.abandon():
                self.abandoned.append(thread)
                log.warning("prompt %s: node %s did not stop within %.1f s of the interrupt; abandoned it",
                            row.id, rec.started[-1] if rec.started else "?", self.interrupt_grace)
                return None
            rec.detached = False  # it was finishing: take its result
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _abandoned(self, row, rec) -> dict:
        """Tells the client its prompt stopped at the node that would not (execution_interrupted) and
        returns the error history keeps."""
        node = rec.started[-1] if rec.started else None
        node_type = (row.prompt.get(node) or {}).get("class_type") if node is not None else None
        rec.send("execution_interrupted", {"prompt_id": row.id, "node_id": node, "node_type": node_type,
                                           "executed": rec.started[:-1], "timestamp": now_ms()})
        if self._stopping.is_set():
            return {"type": "server_stopped", "message": SHUTDOWN_MESSAGE}
        return {"type": "interrupted", "message": f"interrupted by the user; node {node} ({node_type}) "
                f"did not stop within {self.interrupt_grace:g} s and was abandoned"}

    @staticmethod
    def _error_payload(prompt_id, message, exc_type, tb) -> dict:
        return {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                "exception_message": message, "exception_type": exc_type,
                "traceback": tb.splitlines() if tb else [], "current_inputs": {}, "current_outputs": {},
                "timestamp": now_ms()}

