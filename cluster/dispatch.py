"""The server's `Runner` over Ray workers: pending prompts go to idle workers in queue order, each to
the idle worker whose cache holds most of the prompt's node keys (ties: the least loaded), several at
once, one per worker.

Each running prompt has a thread here that drains its worker's buffer in order: events and preview
frames go to the submitting client, files land in the server's folders before the `executed` event
that names them, and the history record is stored before the final `executing` (node null), as on
one machine. A worker whose process dies mid-prompt has the prompt re-queued once on another worker
(the history's messages say so) while Ray restarts it; a second loss marks the prompt failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..server.services import PromptStore, now_ms
from ..server.views import status_payload
from .landing import Landing

log = logging.getLogger("genloom.cluster")

REQUEUED = "execution_requeued"  # the history message of a prompt whose worker was lost
ATTEMPTS = 2


@dataclass
class Slot:
    name: str
    actor: object
    keys: set = field(default_factory=set)  # what its cache holds, as of its last prompt
    load: int = 0  # prompts it ran
    running: object = None  # the PromptRecord it runs
    healthy: bool = False
    dead: str | None = None  # why it is gone for good
    info: dict = field(default_factory=dict)
    sent_inputs: set = field(default_factory=set)


class Dispatcher:
    def __init__(self, engine, store: PromptStore, hub, dirs: dict[str, Path], actors: list, on_stop=None):
        self.engine, self.store, self.hub = engine, store, hub
        self.input_dir = Path(dirs["input"])
        self.landing = Landing({k: dirs[k] for k in ("output", "temp")})
        self.slots = [Slot(name, actor) for name, actor in actors]
        self.retry: deque = deque()  # (row, the worker that lost it)
        self.notes: dict[str, list] = {}  # prompt id -> history messages about lost workers
        self.attempts: dict[str, int] = {}
        self.on_stop = on_stop
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._loop, name="genloom-dispatch", daemon=True)

    # ---- the Runner the routes call ------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots:
            self._watch(slot)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        hit = False
        with self._lock:
            targets = [s for s in self.slots if s.running is not None
                       and (prompt_id is None or s.running.id == prompt_id)]
        for slot in targets:
            slot.actor.interrupt.remote(slot.running.id if slot.running else prompt_id)
            hit = True
        return hit

    def stop(self, grace: float) -> bool:
        self._stopping.set()
        self._wake.set()
        self.interrupt()
        end = time.monotonic() + grace
        for t in list(self._threads):
            t.join(max(0.0, end - time.monotonic()))
        clean = True
        with self._lock:
            left = [s.running for s in self.slots if s.running is not None]
        for row in left:
            clean = False
            self.store.finish(row.id, "failed", None, None, None,
                              {"type": "server_stopped", "message": "the server was stopped while this prompt was running"})
        if self.on_stop is not None:
            self.on_stop()
        return clean

    # ---- what the server's views add ------------------------------------------------------------
    def running_on(self) -> dict[str, str]:
        with self._lock:
            return {s.running.id: s.name for s in self.slots if s.running is not None}

    def free_all(self) -> None:
        import ray

        refs = [s.actor.free.remote() for s in self.slots if s.healthy]
        ray.get(refs, timeout=120)
        for slot in self.slots:
            slot.keys = set()

    def devices(self) -> list[dict]:
        out = []
        for slot in self.slots:
            state = "dead: " + slot.dead if slot.dead else "running" if slot.running else \
                "idle" if slot.healthy else "starting"
            for dev in slot.info.get("devices") or [{"name": "unknown", "type": "unknown", "index": None,
                                                     "vram_total": 0, "vram_free": 0,
                                                     "torch_vram_total": 0, "torch_vram_free": 0}]:
                out.append({**dev, "name": f"{slot.name} {dev['name']}", "worker": slot.name,
                            "host": slot.info.get("host"), "pid": slot.info.get("pid"), "ram_total": slot.info.get("ram_total", 0),
                            "ram_free": slot.info.get("ram_free", 0), "state": state, "prompts_run": slot.load})
        return out

    # ---- dispatching ---------------------------------------------------------------------------
    def _watch(self, slot: Slot) -> None:
        """Wait (on a thread) until the worker answers, then let it take prompts."""
        def wait():
            import ray
            from ray.exceptions import ActorDiedError, GetTimeoutError

            while not self._stopping.is_set():
                try:
                    slot.info = ray.get(slot.actor.info.remote(), timeout=30)
                except GetTimeoutError:
                    continue
                except ActorDiedError as exc:
                    slot.dead = _reason(exc)
                    log.error("worker %s is gone: %s", slot.name, slot.dead)
                    break
                except Exception:  # noqa: BLE001 - restarting: ask again
                    time.sleep(0.5)
                    continue
                for problem in slot.info.get("problems") or ():
                    log.warning("worker %s: %s", slot.name, problem)
                slot.healthy = True
                break
            self._wake.set()
        threading.Thread(target=wait, name=f"genloom-watch-{slot.name}", daemon=True).start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if not self._dispatch_one():
                self._wake.wait(0.5)

    def _dispatch_one(self) -> bool:
        with self._lock:
            idle = [s for s in self.slots if s.healthy and s.running is None]
        if not idle:
            if self.slots and all(s.dead for s in self.slots):
                self._fail_all_pending()
            return False
        row, lost_on = (self.retry.popleft() if self.retry else (self.store.claim_next(), None))
        if row is None:
            return False
        choices = [s for s in idle if s.name != lost_on] or idle
        slot = self._choose(row, choices)
        with self._lock:
            slot.running = row
        t = threading.Thread(target=self._run, args=(slot, row), name=f"genloom-{slot.name}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return True

    def _choose(self, row, idle: list[Slot]) -> Slot:
        try:
            keys = set(self.engine.plan_keys(row.prompt, row.outputs_to_execute or None).values())
        except Exception:  # noqa: BLE001 - the worker will report what is wrong with it
            keys = set()
        return max(idle, key=lambda s: (len(keys & s.keys), -s.load))

    def _fail_all_pending(self) -> None:
        reasons = "; ".join(f"{s.name}: {s.dead}" for s in self.slots)
        while True:
            row = self.retry.popleft()[0] if self.retry else self.store.claim_next()
            if row is None:
                return
            self._fail(row, {"type": "no_worker", "message": f"no cluster worker is available ({reasons})"})

    def _fail(self, row, error: dict) -> None:
        payload = {"prompt_id": row.id, "node_id": None, "node_type": None, "executed": [],
                   "exception_message": error["message"], "exception_type": error["type"], "traceback": [],
                   "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(), **error}
        messages = self.notes.pop(row.id, []) + [["execution_error", payload]]
        self.store.finish(row.id, "failed", {}, {}, messages, payload)
        self.hub.send_threadsafe(row.client_id, "execution_error", payload)
        self.hub.send_threadsafe(row.client_id, "executing", {"node": None, "display_node": None,
                                                              "prompt_id": row.id})
        self._broadcast_status()

    def _broadcast_status(self) -> None:
        self.hub.send_threadsafe(None, "status", status_payload(self.store.remaining()))

    # ---- one prompt on one worker --------------------------------------------------------------
    def _run(self, slot: Slot, row) -> None:
        import ray
        from ray.exceptions import RayActorError

        self._broadcast_status()
        try:
            inputs = inputs_named(self.input_dir, row.prompt, slot.sent_inputs)
            if inputs:
                ray.get(slot.actor.put_inputs.remote(inputs))
            ref = slot.actor.run.remote(row.id, row.client_id, row.prompt, row.extra_data,
                                        row.outputs_to_execute)
            done = False
            while not done:
                for item in ray.get(slot.actor.drain.remote(0.2)):
                    done = self._handle(slot, row, item) or done
            slot.keys = ray.get(ref)
            self.notes.pop(row.id, None)
            self.attempts.pop(row.id, None)
        except RayActorError as exc:
            self._lost(slot, row, _reason(exc))
        except Exception as exc:  # noqa: BLE001 - the dispatcher must survive anything
            log.exception("prompt %s failed on %s outside the engine", row.id, slot.name)
            self._fail(row, {"type": "server_error", "message": f"{type(exc).__name__}: {exc}", "worker": slot.name})
        finally:
            with self._lock:
                slot.running = None
                slot.load += 1
            self._broadcast_status()
            self._wake.set()

    def _handle(self, slot: Slot, row, item) -> bool:
        kind = item[0]
        if kind == "file":
            self.landing.land(slot.name, item[1], item[2], item[3])
        elif kind == "event":
            _, sid, event, data = item
            if event == "executed":
                data = self.landing.patch(slot.name, data)
            self.hub.send_threadsafe(sid, event, data)
        elif kind == "bytes":
            self.hub.send_bytes_threadsafe(item[1], item[2])
        elif kind == "finish":
            _, prompt_id, status, outputs, meta, messages, error = item
            if error is not None:
                error = {**error, "worker": slot.name}
            self.store.finish(prompt_id, status, self.landing.patch(slot.name, outputs), meta,
                              self.notes.get(prompt_id, []) + list(messages or []), error)
        return kind == "done"

    def _lost(self, slot: Slot, row, reason: str) -> None:
        """The worker died under this prompt: re-queue it once, then give up on it."""
        log.warning("worker %s was lost running prompt %s: %s", slot.name, row.id, reason)
        slot.healthy, slot.keys, slot.sent_inputs = False, set(), set()
        self.landing.forget(slot.name)
        attempts = self.attempts[row.id] = self.attempts.get(row.id, 0) + 1
        note = {"prompt_id": row.id, "worker": slot.name, "reason": reason, "attempt": attempts,
                "timestamp": now_ms()}
        self.notes.setdefault(row.id, []).append([REQUEUED, note])
        if attempts >= ATTEMPTS or self._stopping.is_set():
            self.attempts.pop(row.id, None)
            self._fail(row, {"type": "worker_lost", "worker": slot.name,
                             "message": f"worker {slot.name} was lost {attempts} times running this prompt: {reason}"})
        else:
            self.hub.send_threadsafe(row.client_id, REQUEUED, note)
            self.retry.append((row, slot.name))
        self._watch(slot)  # Ray restarts it; it takes prompts again once it answers


def inputs_named(input_dir: Path, prompt: dict, sent: set) -> dict[str, bytes]:
    """Files of the input folder that the prompt names and that were not sent (as they are now) yet."""
    root = Path(input_dir).resolve()
    out = {}
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if not isinstance(value, str) or not value or len(value) > 1024:
                continue
            name = value.rsplit(" [", 1)[0]
            path = (root / name).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                continue
            st = path.stat()
            tag = (name, st.st_mtime_ns, st.st_size)
            if tag not in sent:
                out[name] = path.read_bytes()
                sent.add(tag)
    return out


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
