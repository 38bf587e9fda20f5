"""LoRA files (kohya and diffusers/peft naming) and their non-destructive application.

A LoraWeights is parsed once per file. Which layers it changes is found from its key names and the
shapes of its tensors, without computing anything; the deltas themselves are computed the first time
a patched module is used, once per (file stamp, strength, target, module), and kept in the engine's
ModelOwner (`lora_deltas`, within its byte budget). `patched()` swaps each touched weight for base +
delta (a new tensor) and puts the original tensor object back on exit, so the shared base model is
never written to.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from genloom.diffusion.errors import CheckpointError
from genloom.engine.folders import path_stamp

from . import keymaps, lora_flux, lora_flux2, lora_sd3
from .owner import model_owner
from .weights import read_state_dict

_KOHYA_TARGETS = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                  ("lora_te_", "text_encoder"))
_PEFT_TARGETS = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))
_SUFFIXES = ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.weight", "down"),
             (".lora_B.weight", "up"), (".lora.down.weight", "down"), (".lora.up.weight", "up"),
             (".alpha", "alpha"))


@dataclass(eq=False)
class LoraWeights:
    name: str
    groups: dict  # (target, module name as written in the file) -> {"up", "down", "alpha"?}
    unused: list = field(default_factory=list)
    stamp: tuple | None = None  # (resolved path, on-disk stamp): what its cached deltas are keyed by

    @property
    def has_unet(self) -> bool:
        return any(t == "unet" for t, _ in self.groups)

    @property
    def has_text(self) -> bool:
        return any(t != "unet" for t, _ in self.groups)

    def _layers(self, target: str, module):
        """(parameter name, its weight, the group's tensors) for each group that fits a layer."""
        aliases = module_aliases(module, target)
        params = dict(module.named_parameters())
        for (tgt, name), parts in self.groups.items():
            if tgt != target:
                continue
            path = aliases.get(name)
            if path is None or path + ".weight" not in params:
                continue
            weight = params[path + ".weight"]
            up, down = parts["up"], parts["down"]
            if up.shape[0] * down.flatten(1).shape[1] != weight.numel() or up.flatten(1).shape[1] != down.shape[0]:
                continue  # same name, other shape: a LoRA for another model size
            yield path + ".weight", weight, parts

    def deltas(self, target: str, module) -> dict:
        """{parameter name: float32 delta at strength 1} for the weights this file changes."""
        import torch

        out = {}
        for name, weight, parts in self._layers(target, module):
            up = parts["up"].to(weight.device, torch.float32)
            down = parts["down"].to(weight.device, torch.float32)
            rank = down.shape[0]
            scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale
            out[name] = out.get(name, 0) + delta
        return out

    def matched(self, target: str, module) -> int:
        """How many of `module`'s weights this file changes: from names and shapes, nothing computed."""
        return len({name for name, _w, _p in self._layers(target, module)})


def load_lora(path: Path) -> LoraWeights:
    path = Path(path)
    stamp = (str(path.resolve()), path_stamp(path))
    state, _ = read_state_dict(path)
    return lora_from_state(state, path.name, stamp)


def lora_from_state(state: dict, file_name: str, stamp: tuple | None = None) -> LoraWeights:
    """A LoRA from its state dict (a file's, or one a plugin loaded itself: stamp None)."""
    groups: dict = {}
    unused = []
    for key, tensor in state.items():
        for suffix, part in _SUFFIXES:
            if key.endswith(suffix):
                base = key[: -len(suffix)]
                break
        else:
            unused.append(key)
            continue
        target, name = _split_target(base)
        if target is None:
            unused.append(key)
            continue
        groups.setdefault((target, name), {})[part] = tensor
    for key in [k for k, v in groups.items() if "up" not in v or "down" not in v]:
        unused.append(".".join(key))
        del groups[key]
    groups = lora_sd3.expand(lora_flux.expand(lora_flux2.expand(groups)))  # Flux.2 first: it reads the shapes
    if not groups:
        raise CheckpointError(f"{file_name} holds no LoRA weights (lora_down/lora_up or lora_A/lora_B)")
    return LoraWeights(Path(file_name).stem, groups, unused, stamp)


def _split_target(base: str):
    base = base.removeprefix("base_model.model.")
    for prefix, target in _KOHYA_TARGETS + _PEFT_TARGETS + tuple((p, "unet") for p in lora_flux.PREFIXES):
        if base.startswith(prefix):
            return target, _clean(base[len(prefix):])
    if base.startswith(("down_blocks", "up_blocks", "mid_block", "joint_blocks") + lora_flux.BARE):
        return "unet", _clean(base)
    return None, base


def _clean(name: str) -> str:
    """Old diffusers attention-processor names -> module names."""
    name = re.sub(r"\.processor\.(to_[qkv])_lora$", r".\1", name)
    return re.sub(r"\.processor\.to_out_lora$", ".to_out.0", name)


def module_aliases(module, target: str) -> dict:
    """Every spelling a LoRA file may use for a layer -> its module path in `module` (kept per
    module in the engine's ModelOwner)."""
    return model_owner().lora_aliases.get(module, target, lambda: _aliases(module, target))


def _aliases(module, target: str) -> dict:
    table = {}
    if target == "unet" and "down_block_types" in getattr(module, "config", {}):
        try:
            table = keymaps.unet_map(dict(module.config))
        except ValueError:
            pass  # a UNet without a single-file layout: only diffusers names apply
    paths = [n for n, m in module.named_modules() if n and getattr(m, "weight", None) is not None]
    aliases = {}
    for path in paths:
        spellings = {path}
        if target != "unet":
            spellings.add("text_model." + path)
        elif table:
            ldm = keymaps._translate(path + ".weight", table)
            if ldm:
                spellings.add(ldm[: -len(".weight")])
        for s in spellings:
            aliases[s] = path
            aliases[s.replace(".", "_")] = path
    return aliases


def scaled_deltas(lora: LoraWeights, strength: float, target: str, module) -> dict:
    """{parameter name: strength * delta} on the CPU, computed once per (file stamp, strength, target,
    module) while the owner's budget keeps it; a LoraWeights without a stamp is computed each time."""
    def compute():
        return {name: (strength * delta).cpu() for name, delta in lora.deltas(target, module).items()}

    if lora.stamp is None:
        return compute()
    return model_owner().lora_deltas.get(module, (lora.stamp, float(strength), target), compute)


@contextmanager
def patched(module, patches: tuple, target: str):
    """Apply (LoraWeights, strength) patches to `module` for the duration of the block."""
    if not patches:
        yield module
        return
    params = dict(module.named_parameters())
    originals = {}
    try:
        for lora, strength in patches:
            for name, delta in scaled_deltas(lora, strength, target, module).items():
                param = params[name]
                originals.setdefault(name, param.data)
                base = param.data
                param.data = (base.float() + delta.to(base.device)).to(base.dtype)
        yield module
    finally:
        for name, tensor in originals.items():
            params[name].data = tensor
