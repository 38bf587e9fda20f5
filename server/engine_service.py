"""The engine as the routes need it: validation and node definitions with this server's folders,
freeing memory, and the devices it runs on.

Every call blocks (COMBO lists read folders, devices ask torch), so routes make them off the event
loop; the folders are made current for the call, so option lists (models, inputs) are the server's.
"""

from __future__ import annotations

import logging

from ..engine import context

log = logging.getLogger("genloom.server")


class EngineService:
    def __init__(self, engine, device: str):
        self.engine = engine
        self.folders = engine.folders
        self.device = device

    def _with_folders(self, fn):
        token = context.use(context.RunContext(device_choice=self.device, folders=self.folders))
        try:
            return fn()
        finally:
            context.reset(token)

    def validate(self, prompt: dict, outputs: list[str] | None):
        return self._with_folders(lambda: self.engine.validate(prompt, outputs=outputs))

    def object_info(self, name: str | None = None) -> dict:
        """Node definitions; a node whose option list cannot be computed is left out and logged, so
        one broken pack never keeps the editor from starting."""
        registry = self.engine.registry
        names = list(registry.nodes) if name is None else [name] if name in registry else []
        return self._with_folders(lambda: dict(filter(None, (self._entry(registry[n]) for n in names))))

    @staticmethod
    def _entry(schema):
        try:
            return schema.name, schema.object_info()
        except Exception as exc:  # noqa: BLE001 - reported, the rest still listed
            log.warning("node %s left out of /object_info: %s: %s", schema.name, type(exc).__name__, exc)
            return None

    def free(self) -> None:
        self.engine.free()

    def devices(self) -> list[dict]:
        if self.device == "cpu":
            return [_device("cpu", "cpu", None, 0, 0)]
        try:
            import torch
        except ImportError:
            return [_device("cpu", "cpu", None, 0, 0)]
        if not torch.cuda.is_available():
            return [_device("cpu", "cpu", None, 0, 0)]
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(_device(f"cuda:{i} {torch.cuda.get_device_name(i)}", "cuda", i, total, free))
        return out


def _device(name, type_, index, total, free) -> dict:
    return {"name": name, "type": type_, "index": index, "vram_total": total, "vram_free": free,
            "torch_vram_total": total, "torch_vram_free": free}
