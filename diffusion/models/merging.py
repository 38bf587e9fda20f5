"""Model and CLIP merges as ComfyUI's merge nodes compute them, through the ModelPatcher facade:
the result is a patched copy whose weights are, key by key,

    weight1 * strength_model + strength_patch * weight2

applied inside use() like a LoRA (the loaded modules are never written to). ModelMergeSimple:
(ratio, 1 - ratio); ModelMergeAdd: (1, 1); ModelMergeSubtract: (multiplier, -multiplier), i.e.
multiplier * (model1 - model2) as ComfyUI computes it; ModelMergeBlocks: the ratio of the longest
block-name prefix ("input", "middle", "out") of each LDM key, the first one for keys none matches.
"""

from __future__ import annotations

from genloom.diffusion.errors import CheckpointError

MODEL_PREFIX = "diffusion_model."
SKIP_CLIP = (".position_ids", ".logit_scale")


def _grouped(patches: dict, ratio_of) -> dict:
    groups: dict = {}
    for key, value in patches.items():
        groups.setdefault(float(ratio_of(key)), {})[key] = value
    return groups


def merge_models(model1, model2, ratio_of, strengths) -> object:
    """model1 patched with model2's weights: key k gets strengths(ratio_of(k)) = (patch, model)."""
    m = model1.clone()
    found = []
    for ratio, group in _grouped(model2.get_key_patches(MODEL_PREFIX), ratio_of).items():
        patch, keep = strengths(ratio)
        found += m.add_patches(group, patch, keep)
    if not found:
        raise CheckpointError("the two models share no weight (different architectures?)")
    return m.handle


def block_ratio(ratios: dict):
    """ModelMergeBlocks' choice: the ratio of the longest matching block-name prefix."""
    default = next(iter(ratios.values()))

    def ratio_of(key: str) -> float:
        name = key[len(MODEL_PREFIX):] if key.startswith(MODEL_PREFIX) else key
        best = max((p for p in ratios if name.startswith(p)), key=len, default=None)
        return default if best is None else ratios[best]

    return ratio_of


def merge_clips(clip1, clip2, strength_patch: float, strength_model: float):
    m = clip1.clone()
    patches = {k: v for k, v in clip2.get_key_patches().items() if not k.endswith(SKIP_CLIP)}
    if not m.add_patches(patches, strength_patch, strength_model):
        raise CheckpointError("the two text encoders share no weight (different architectures?)")
    return m.handle
