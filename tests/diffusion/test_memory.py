"""The memory manager's policy with real modules and real .to() moves; the byte budget of a second
pool is played by a budget on "cpu", so the policy is tested without a GPU. And the owner of each
engine's models: every handle goes through its engine's manager, two engines never share one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from genloom.diffusion.models.memory import MOVES_KEPT, MemoryManager, OutOfMemory, module_bytes  # noqa: E402
from genloom.diffusion.models.owner import ModelOwner, model_owner  # noqa: E402
from genloom.engine import context  # noqa: E402
from genloom.engine.sizes import parse_optional_size  # noqa: E402

SIZE = 64 * 64 * 4 + 64 * 4  # one nn.Linear(64, 64) in float32


def _modules(n):
    torch.manual_seed(0)
    return [nn.Linear(64, 64) for _ in range(n)]


def test_bytes_and_lru_eviction_order():
    a, b, c = _modules(3)
    assert module_bytes(a) == SIZE and module_bytes(a, torch.float16) == SIZE // 2
    mm = MemoryManager(budgets={"cpu": int(2.5 * SIZE)})
    for m, name in ((a, "a"), (b, "b")):
        with mm.use(m, "cpu", name=name):
            pass
    assert mm.resident("cpu") == ["a", "b"] and mm.used_bytes("cpu") == 2 * SIZE
    with mm.use(c, "cpu", name="c"):
        pass
    assert mm.resident("cpu") == ["b", "c"]  # a was least recently used
    with mm.use(b, "cpu", name="b"):
        pass
    with mm.use(a, "cpu", name="a"):
        pass
    assert mm.resident("cpu") == ["b", "a"]  # c went: b had been used since
    assert [m for m in mm.moves if m[1] == "offload"] == [("a", "offload"), ("c", "offload")]


def test_pinned_components_stay_and_always_mode_leaves_at_once():
    a, b = _modules(2)
    mm = MemoryManager(budgets={"cpu": SIZE})
    with mm.use(a, "cpu", name="a"):
        with mm.use(b, "cpu", name="b"):
            assert mm.resident("cpu") == ["a", "b"]  # a is in use: over budget rather than pulled away
    with mm.use(a, "cpu", name="a"):
        pass
    assert mm.resident("cpu") == ["a"]
    ctx = context.RunContext(device_choice="cpu", options={"offload": "always"})
    token = context.use(ctx)
    try:
        lazy = MemoryManager()
        with lazy.use(b, name="b"):
            assert lazy.resident() == ["b"]
        assert lazy.resident() == [] and lazy.mode() == "always"
    finally:
        context.reset(token)


def test_half_precision_copy_is_lossless_and_offload_restores_the_same_tensors():
    (a,) = _modules(1)
    original = a.weight.data.clone()
    ptr = a.weight.data_ptr()
    mm = MemoryManager()
    with mm.use(a, "cpu", torch.float16, name="a") as m:
        assert m.weight.dtype == torch.float16 and mm.used_bytes("cpu") == SIZE // 2
        out = m(torch.ones(1, 64, dtype=torch.float16))
        assert out.dtype == torch.float16
    mm.free_all()
    assert a.weight.dtype == torch.float32 and a.weight.data_ptr() == ptr
    assert torch.equal(a.weight.data, original) and mm.resident() == []


class _Flaky(nn.Linear):
    """A real module whose next `fails` moves hit an out-of-memory error, as a full GPU would."""

    fails = 0

    def _apply(self, fn, *args, **kwargs):
        if self.fails:
            self.fails -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._apply(fn, *args, **kwargs)


def test_out_of_memory_frees_others_and_retries_once_then_a_clear_error():
    (other,) = _modules(1)
    flaky = _Flaky(64, 64)
    mm = MemoryManager()
    with mm.use(other, "cpu", torch.float16, name="other"):
        pass
    flaky.fails = 1
    with mm.use(flaky, "cpu", torch.float16, name="flaky"):
        assert flaky.weight.dtype == torch.float16
    assert ("other", "offload") in mm.moves and mm.resident() == ["flaky"]
    assert other.weight.dtype == torch.float32
    mm.free_all()
    flaky.fails = 2
    with pytest.raises(OutOfMemory, match="flaky.*offload"):
        with mm.use(flaky, "cpu", torch.float16, name="flaky"):
            pass
    assert flaky.weight.dtype == torch.float32 and mm.resident() == []


def test_retry_on_oom_runs_the_step_again_once():
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "done"

    mm = MemoryManager()
    assert mm.retry_on_oom(step) == "done" and len(calls) == 2
    with pytest.raises(OutOfMemory, match="during sampling"):
        mm.retry_on_oom(lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")), "sampling")
    with pytest.raises(ValueError):
        mm.retry_on_oom(lambda: (_ for _ in ()).throw(ValueError("not memory")))


def test_budget_settings():
    assert parse_optional_size("6GB") == 6 * 2**30 and parse_optional_size("512 MiB") == 512 * 2**20
    assert parse_optional_size(1000) == 1000 and parse_optional_size(None) is None
    ctx = context.RunContext(device_choice="cpu", options={"vram_budget": "1.5G"})
    token = context.use(ctx)
    try:
        assert MemoryManager().budget("cuda:0") == int(1.5 * 2**30)
        assert MemoryManager().budget("cpu") is None
        assert MemoryManager(budgets={"cuda": 7}).budget("cuda:1") == 7
    finally:
        context.reset(token)


def _engine_context(engine):
    """Run nodes directly inside `engine`'s context, as its executor would."""
    return context.RunContext(device_choice="cpu", folders=engine.folders, options=engine.options,
                              resources=engine.resources)


def test_handles_go_through_the_engines_manager_and_engine_free_unloads(tiny_models):
    import genloom
    from genloom.nodes.loaders import CheckpointLoaderSimple

    engine = genloom.Engine(device="cpu", models_dirs=[tiny_models])
    token = context.use(_engine_context(engine))
    try:
        model, clip, vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
        mm = model_owner().memory
        assert mm is engine.resources.peek("models").memory
        mm.free_all()
        images = vae.decode(torch.zeros(1, 4, 4, 4))
        assert images.device.type == "cpu" and images.dtype == torch.float32
        with model.use() as unet:
            assert unet is model.unet
        assert {"AutoencoderKL", "UNet2DConditionModel"} <= set(mm.resident("cpu"))
    finally:
        context.reset(token)
    engine.free()
    assert mm.resident() == []


def test_two_engines_have_separate_owners(tiny_models):
    """Loading in one engine leaves the other's owner untouched; freeing one keeps the other's models."""
    import genloom
    from genloom.nodes.loaders import CheckpointLoaderSimple

    first, second = (genloom.Engine(device="cpu", models_dirs=[tiny_models]) for _ in range(2))
    handles = {}
    for engine in (first, second):
        token = context.use(_engine_context(engine))
        try:
            model, _clip, vae = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
            with model.use():
                pass
            handles[engine] = (model, vae)
            owner = model_owner()
        finally:
            context.reset(token)
        assert isinstance(owner, ModelOwner) and owner is engine.resources.peek("models")
        if engine is first:
            assert second.resources.peek("models") is None  # nothing of the first load reached it
    owners = [e.resources.peek("models") for e in (first, second)]
    assert owners[0] is not owners[1] and owners[0].memory is not owners[1].memory
    assert handles[first][0].unet is not handles[second][0].unet  # each engine loaded its own copy
    assert len(owners[0].loaded) == len(owners[1].loaded) == 1
    second.free()
    assert owners[1].memory.resident() == []
    assert owners[0].memory.resident("cpu") == ["UNet2DConditionModel"]
    first.free()
    assert owners[0].memory.resident() == []


def test_moves_history_is_bounded():
    """A long-running server moves models forever: the diagnosis history keeps only the latest."""
    (a,) = _modules(1)
    mm = MemoryManager(offload="always")
    for _ in range(MOVES_KEPT):
        with mm.use(a, "cpu", name="a"):
            pass
    assert len(mm.moves) == MOVES_KEPT and list(mm.moves)[-2:] == [("a", "load"), ("a", "offload")]


def test_one_out_of_memory_rule_for_the_manager_and_tiling():
    """The manager's retries and the tiler's tile halving agree on what running out of memory is."""
    from genloom.diffusion.tiling import run_tiled

    mm = MemoryManager()
    image = torch.rand(1, 3, 8, 8)
    for error, is_oom in ((torch.OutOfMemoryError("CUDA out of memory"), True),
                          (RuntimeError("CUDA error: out of memory"), True),
                          (ValueError("out of memory"), False)):
        calls = []

        def step(error=error, calls=calls):
            calls.append(1)
            if len(calls) == 1:
                raise error
            return torch.zeros(1, 3, 16, 16)

        for run in (lambda: mm.retry_on_oom(step), lambda: run_tiled(lambda x: step(), image, 2, tile=16, min_tile=8)):
            calls.clear()
            if is_oom:
                run()
                assert len(calls) == 2
            else:
                with pytest.raises(ValueError):
                    run()
                assert len(calls) == 1


def test_sizes_read_every_spelling_the_budgets_took():
    for text, size in (("6G", 6 * 2**30), ("1.5G", int(1.5 * 2**30)), ("512 MiB", 512 * 2**20), ("512Ki", 512 * 1024),
                       ("2 gb", 2 * 2**30), ("1e9", 10**9), (".5g", 2**29), ("4096", 4096)):
        assert parse_optional_size(text) == size, text
    for bad in ("lots", "2XB", "1e", "-1"):
        with pytest.raises(ValueError):
            parse_optional_size(bad)
