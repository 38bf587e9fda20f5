"""`genloom serve`: ComfyUI's HTTP/websocket API and its web editor in front of a genloom Engine.

Every API route answers at `/x` and `/api/x`. The data folder holds input/, output/, temp/, user/ and
the SQLite database, so a restarted server finds its queue, history and saved workflows again.
SIGTERM/SIGINT stop it cleanly: the running prompt is interrupted and marked, pending ones stay queued.
This module wires the parts together (`Server`) and runs them; the routes live in *_routes.py,
files.py, userdata.py, logs.py and ws.py, each given the services it needs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..engine.budgets import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, add_limit_arguments, limit_options
from ..engine.sizes import parse_size
from ..runtime import set_threads, thread_count
from . import openapi
from .endpoints import Endpoint, register
from .engine_service import EngineService
from .extensions import Extensions, add_pack_routes, attach, prompt_server
from .files import Files
from .job_routes import JobRoutes
from .logs import LogBuffer
from .prompt_routes import PromptRoutes
from .security import WeakToken, check_token, is_loopback, make_middlewares
from .services import OffLoopPrompts
from .store import Store
from .system_routes import SystemRoutes
from .templates import Templates, web_extension
from .userdata import DEFAULT_QUOTA, UserData
from .views import status_payload
from .worker import DEFAULT_INTERRUPT_GRACE, Worker
from .ws import Hub

log = logging.getLogger("genloom.server")

MiB = 1024 * 1024
# The editor page may only talk to this server: no model-download probes, telemetry or remote assets
# leave the user's machine, whatever a loaded workflow links to.
EDITOR_CSP = ("connect-src 'self' blob: data:; img-src 'self' blob: data:; media-src 'self' blob: data:; "
              "font-src 'self' data:; frame-src 'self'; object-src 'none'")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8188
    data_dir: Path = field(default_factory=lambda: Path.cwd() / "data")
    plugins_dirs: list[Path] = field(default_factory=list)
    models_dirs: list[Path] | None = None
    cache: str = "default"
    device: str = "auto"
    token: str | None = None
    max_upload: int = 50 * MiB
    max_pixels: int = DEFAULT_MAX_PIXELS  # per upload (every frame) and per picture a node makes or loads
    max_batch: int = DEFAULT_MAX_BATCH
    max_bytes: int | None = None  # the largest image batch a node may declare; None: the memory available
    user_quota: int = DEFAULT_QUOTA  # bytes in the user folder (settings, saved workflows)
    shutdown_grace: float = 10.0
    interrupt_grace: float = DEFAULT_INTERRUPT_GRACE  # seconds before a node that ignores /interrupt is abandoned
    threads: int | None = None  # torch CPU threads; None: runtime.default_threads()
    editor: bool = True
    argv: list[str] = field(default_factory=list)
    ray: str | None = None  # "local" or a Ray cluster's address: prompts run on Ray workers (genloom.cluster)
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    ship_code: str = "auto"  # ship genloom's code to the Ray workers: auto (when --ray is an address), always, never


def frontend_static() -> Path | None:
    """The editor's files from the optional comfyui-frontend-package wheel (genloom[editor])."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    static = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    return static if (static / "index.html").is_file() else None


class Server:
    """The composition root: builds the engine, the prompt store and its services, the worker, the hub
    and the file areas, and hands each group of routes only the services it works on."""

    def __init__(self, config: Config, engine=None):
        check_token(config.token)
        self.config = config
        data = Path(config.data_dir)
        dirs = {kind: data / kind for kind in ("input", "output", "temp")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        if engine is None:
            from ..runtime import Engine, build_registry

            engine = Engine(registry=build_registry(config.plugins_dirs or ()), cache=config.cache,
                            device=config.device, models_dirs=config.models_dirs, input_dir=dirs["input"],
                            output_dir=dirs["output"], temp_dir=dirs["temp"])
        engine.options.update(limit_options(config))
        for problem in engine.registry.problems:
            log.warning("node pack %s: %s", problem.get("source"), problem.get("message", "").strip())
        self.engine = engine
        self.store = Store(data / "genloom.db")
        if self.store.recovered:
            log.warning("marked %d prompt(s) failed that were running when the server last stopped",
                        len(self.store.recovered))
        self.prompts = OffLoopPrompts(self.store)  # the queue, history and jobs services of the routes
        self.hub = Hub(self.status, {"supports_preview_metadata": False, "max_upload_size": config.max_upload})
        self.worker = Worker(engine, self.store, self.hub, config.interrupt_grace) if not config.ray else self._cluster(dirs)
        self.files = Files(dirs, config.max_upload, config.max_pixels)
        self.userdata = UserData(data / "user", config.user_quota)
        self.logs = LogBuffer(self.hub)

    def _cluster(self, dirs):
        """The Runner over Ray workers, asked for by name: only `--ray` imports the cluster layer."""
        self.cluster = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.cluster")
        return self.cluster.make_runner(self.config, self.engine, self.store, self.hub, dirs)

    async def status(self) -> dict:
        """The websocket `status` data, read through the queue service (off the loop)."""
        return status_payload(await self.prompts.remaining())

    def endpoints(self) -> list[Endpoint]:
        engine, queue = EngineService(self.engine, self.config.device), self.prompts
        if self.config.ray:  # the workers' devices in /system_stats, where prompts run in /queue
            engine, queue = self.cluster.adapt(self.worker, engine, queue)
        packs = prompt_server()
        on_prompt = packs.trigger_on_prompt if packs is not None else None  # handlers, client_id
        return [*PromptRoutes(queue, self.prompts, self.worker, self.hub, engine, on_prompt).endpoints(),
                *Extensions({**self.engine.registry.packs, **web_extension()},
                            frontend_static() if self.config.editor else None).endpoints(),
                *Templates(self.engine.registry, self.files.folder("input")).endpoints(),
                *JobRoutes(self.prompts, self.worker, self.hub).endpoints(),
                *SystemRoutes(engine, self.files, self.hub.server_flags, self.config.argv).endpoints(),
                *self.files.endpoints(), *self.hub.endpoints(), *self.userdata.endpoints(),
                *self.logs.endpoints(), *openapi.endpoints()]

    def close(self) -> None:
        """After the worker stopped: finish the store calls in flight, then close the database."""
        self.prompts.close()


def build_app(server: Server) -> web.Application:
    config = server.config
    app = web.Application(client_max_size=config.max_upload + MiB,
                          middlewares=make_middlewares(config.token, is_loopback(config.host)))
    register(app, server.endpoints())
    packs = prompt_server()
    if packs is not None:
        add_pack_routes(app, packs)
    static = frontend_static() if config.editor else None
    if static is not None:
        index = static / "index.html"

        async def editor(request):
            """The web editor (ComfyUI's frontend)."""
            return web.FileResponse(index, headers={"Cache-Control": "no-cache",
                                                    "Content-Security-Policy": EDITOR_CSP})

        app.router.add_get("/", editor)
        app.router.add_static("/", static)
    else:
        app.router.add_get("/", _no_editor)

    async def on_startup(app):
        server.hub.loop = asyncio.get_running_loop()
        if packs is not None:
            attach(packs, server.hub, app)
        logging.getLogger("genloom").addHandler(server.logs)
        server.worker.start()

    async def on_cleanup(app):
        logging.getLogger("genloom").removeHandler(server.logs)
        if packs is not None:
            packs.detach()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def _no_editor(request):
    """Says how to install the web editor."""
    return web.Response(text="genloom server. The web editor is not installed: pip install 'genloom[editor]'\n")


async def serve(server: Server, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then stop the worker, sockets and the store."""
    config = server.config
    app = build_app(server)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"genloom serving on http://{config.host}:{port}", flush=True)
    if ready is not None:
        ready(port)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("genloom: stopping", flush=True)
        clean = await loop.run_in_executor(None, server.worker.stop, config.shutdown_grace)
        server.stopped_cleanly = clean
        if not clean:
            log.warning("a running node did not stop within %.0f s; its prompt was marked", config.shutdown_grace)
        await server.hub.close_all()
        await runner.cleanup()
        server.close()


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(prog="genloom serve", description="Serve ComfyUI's API and web editor.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8188, help="port (default 8188; 0 picks a free one)")
    p.add_argument("--plugins-dir", type=Path, action="append", default=[],
                   help="folder of node packs to load (repeatable)")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="input, output, temp, user data and the database (default ./data)")
    p.add_argument("--models-dir", type=Path, action="append", help="model folder (repeatable)")
    p.add_argument("--cache", default="default", help="cache policy, as for genloom run")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--token", default=os.environ.get("GENLOOM_TOKEN"),
                   help="access token (required when binding anything but loopback; env GENLOOM_TOKEN)")
    p.add_argument("--max-upload-mb", type=int, default=50, help="largest accepted upload (default 50)")
    add_limit_arguments(p)
    p.add_argument("--user-quota", type=parse_size, default=DEFAULT_QUOTA,
                   help="largest total size of the user folder: settings and saved workflows (default 1GB)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds a running prompt gets to stop on SIGTERM/SIGINT (default 10)")
    p.add_argument("--interrupt-grace", type=float, default=DEFAULT_INTERRUPT_GRACE,
                   help="seconds a running node gets to notice /interrupt; a node that never checks is then "
                        f"abandoned and the queue goes on (default {DEFAULT_INTERRUPT_GRACE:g})")
    p.add_argument("--threads", type=thread_count, help="CPU threads for torch (default: half the cores, at most 8; "
                   "or GENLOOM_THREADS / OMP_NUM_THREADS)")
    p.add_argument("--no-editor", action="store_true", help="serve the API only")
    p.add_argument("--ray", metavar="local|ADDRESS", help="run prompts on Ray workers: 'local' starts Ray on "
                   "this machine, an address joins a cluster (needs genloom[ray]; docs/scale-out.md)")
    p.add_argument("--workers", type=int, default=1, help="Ray workers, each with its own engine (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker takes (default 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray worker takes (default 1)")
    p.add_argument("--ship-code", choices=("auto", "always", "never"), default="auto",
                   help="send genloom's code to the Ray workers (auto: when --ray is an address, not 'local')")
    args = p.parse_args(argv)
    return Config(host=args.host, port=args.port, data_dir=args.data_dir.resolve(),
                  plugins_dirs=args.plugins_dir, models_dirs=args.models_dir, cache=args.cache,
                  device=args.device, token=args.token or None, max_upload=args.max_upload_mb * MiB,
                  editor=not args.no_editor, threads=args.threads, max_pixels=args.max_pixels,
                  max_batch=args.max_batch, max_bytes=args.max_bytes, user_quota=args.user_quota, shutdown_grace=args.shutdown_grace,
                  interrupt_grace=args.interrupt_grace,
                  argv=["genloom", "serve", *argv],
                  ray=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                  cpus_per_worker=args.cpus_per_worker, ship_code=args.ship_code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    config = parse_args(argv)
    if not is_loopback(config.host) and not config.token:
        print(f"genloom serve: binding {config.host} exposes the server to the network; "
              "give an access token with --token (or GENLOOM_TOKEN)", file=sys.stderr)
        return 2
    try:
        check_token(config.token)
    except WeakToken as exc:
        print(f"genloom serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("torch CPU threads: %d", set_threads(config.threads))
    try:
        server = Server(config)
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback at startup
        print(f"genloom serve: could not start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(server))
    except OSError as exc:
        print(f"genloom serve: {exc}", file=sys.stderr)
        return 1
    if not getattr(server, "stopped_cleanly", True):
        # A node that never checks for interrupts still runs on the worker thread; letting the
        # interpreter finalise under it aborts the process (status -6). Its prompt is marked and the
        # store closed, so leave at once, with success.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
