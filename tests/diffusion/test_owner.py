"""The ModelOwner's tables: loaded models follow the file on disk, LoRA alias tables are bounded and
belong to their engine, and the module caches evict least recently used entries within their limits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from genloom.diffusion.models.loading import Bundle  # noqa: E402
from genloom.diffusion.models.lora import module_aliases  # noqa: E402
from genloom.diffusion.models.owner import (ALIAS_TABLES_KEPT, LoadedModels, ModelOwner,  # noqa: E402
                                            ModuleCache, model_owner)
from genloom.engine import context  # noqa: E402


class _Handle:
    """Stands in for a MODEL handle: weakly referable, nothing else."""


def test_loaded_models_are_shared_until_the_file_changes_or_the_handles_go(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"one")
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(b"one")
    loaded, builds = LoadedModels(), []

    def build():
        builds.append(1)
        return Bundle(_Handle(), None, None)

    for path in (file, folder):
        builds.clear()
        first = loaded.get(path, build)
        assert loaded.get(path, build).model is first.model and len(builds) == 1
        assert loaded.get(path, build, tag="vae").model is not first.model and len(builds) == 2
        target = path / "unet" / "weights.bin" if path.is_dir() else path
        target.write_bytes(b"other size")  # the on-disk stamp (genloom.engine.folders.path_stamp) moved
        assert loaded.get(path, build).model is not first.model and len(builds) == 3
    assert len(loaded) == 1  # only `first` (the folder's first load) is still held by anyone
    builds.clear()
    kept = loaded.get(file, build)
    del first
    assert len(loaded) == 1 and len(builds) == 1
    assert loaded.get(file, build).model is kept.model and len(builds) == 1
    del kept
    assert len(loaded) == 0  # weak references only: the table never keeps a model alive
    loaded.get(file, build)
    assert len(builds) == 2


def test_lora_alias_tables_are_bounded_and_owned_per_engine():
    modules = [nn.Sequential(nn.Linear(2, 2)) for _ in range(ALIAS_TABLES_KEPT + 8)]
    mine, other = context.RunContext(device_choice="cpu"), context.RunContext(device_choice="cpu")
    token = context.use(mine)
    try:
        for module in modules:
            assert module_aliases(module, "text_encoder")["text_model.0"] == "0"
        tables = model_owner().lora_aliases
        assert len(tables) == ALIAS_TABLES_KEPT
        computed = tables.computed
        module_aliases(modules[-1], "text_encoder")  # recent: still there
        assert tables.computed == computed
        module_aliases(modules[0], "text_encoder")  # the oldest went first
        assert tables.computed == computed + 1
    finally:
        context.reset(token)
    assert other.resources.peek("models") is None
    assert mine.resources.peek("models").lora_aliases is tables


def test_module_cache_evicts_least_recently_used_within_the_byte_budget():
    cache = ModuleCache(budget=lambda: 100, size=lambda value: value)
    a, b, c = (nn.Linear(1, 1) for _ in range(3))
    assert cache.get(a, "k", lambda: 40) == 40 and cache.get(b, "k", lambda: 40) == 40
    assert cache.get(a, "k", lambda: 0) == 40  # a hit: nothing computed, a is now the most recent
    cache.get(c, "k", lambda: 40)
    assert cache.nbytes == 80 and cache.computed == 3
    assert cache.get(a, "k", lambda: 0) == 40 and cache.get(b, "k", lambda: 41) == 41  # b had to go
    assert cache.get(c, "big", lambda: 101) == 101 and cache.nbytes <= 100  # too big to keep
    del a
    cache.get(c, "k2", lambda: 1)
    assert cache.nbytes <= 100 and all(ref() is not None for ref, _v, _n in cache._entries.values())


def test_free_offloads_and_drops_the_deltas_only():
    owner = ModelOwner()
    layer = nn.Linear(2, 2)
    with owner.memory.use(layer, "cpu", name="layer"):
        pass
    owner.lora_deltas.get(layer, "k", lambda: {"w": torch.ones(4)})
    owner.lora_aliases.get(layer, "unet", dict)
    owner.free()
    assert owner.memory.resident() == [] and len(owner.lora_deltas) == 0 and len(owner.lora_aliases) == 1
