"""Model merging and saving (ComfyUI's advanced/model_merging): merges return patched copies
(genloom.diffusion.models.merging); the save nodes write single files in the original key layout
ComfyUI loads, under the output folder (genloom.diffusion.models.saving)."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath
from genloom.engine.node import Float, Hidden, Input, Node, NodeOutput, Out, String

_RATIO = dict(min=0.0, max=1.0, step=0.01)
_MULT = dict(min=-10.0, max=10.0, step=0.01)
_HIDDEN = [Hidden("prompt", "PROMPT"), Hidden("extra_pnginfo", "EXTRA_PNGINFO")]
CATEGORY = "advanced/model_merging"


def _merge(model1, model2, ratio_of, strengths):
    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.merging import merge_models

    try:
        return (merge_models(model1, model2, ratio_of, strengths),)
    except CheckpointError as exc:
        raise NodeInputError("model2", str(exc)) from None


class ModelMergeSimple(Node):
    """Blends two models: ratio 1 keeps model1, 0 gives model2."""

    category = CATEGORY
    inputs = [Input("model1", "MODEL"), Input("model2", "MODEL"), Float("ratio", 1.0, **_RATIO)]
    outputs = [Out("MODEL")]

    def run(self, model1, model2, ratio):
        return _merge(model1, model2, lambda _k: ratio, lambda r: (1.0 - r, r))


class ModelMergeBlocks(Node):
    """Blends two models with one ratio for the input blocks, the middle block and the output blocks."""

    category = CATEGORY
    inputs = [Input("model1", "MODEL"), Input("model2", "MODEL"), Float("input", 1.0, **_RATIO),
              Float("middle", 1.0, **_RATIO), Float("out", 1.0, **_RATIO)]
    outputs = [Out("MODEL")]

    def run(self, model1, model2, input, middle, out):  # noqa: A002 - ComfyUI's input name
        from genloom.diffusion.models.merging import block_ratio

        ratio_of = block_ratio({"input": input, "middle": middle, "out": out})
        return _merge(model1, model2, ratio_of, lambda r: (1.0 - r, r))


class ModelMergeSubtract(Node):
    """multiplier * (model1 - model2), key by key (as ComfyUI computes it)."""

    category = CATEGORY
    inputs = [Input("model1", "MODEL"), Input("model2", "MODEL"), Float("multiplier", 1.0, **_MULT)]
    outputs = [Out("MODEL")]

    def run(self, model1, model2, multiplier):
        return _merge(model1, model2, lambda _k: multiplier, lambda m: (-m, m))


class ModelMergeAdd(Node):
    """model1 + model2, key by key."""

    category = CATEGORY
    inputs = [Input("model1", "MODEL"), Input("model2", "MODEL")]
    outputs = [Out("MODEL")]

    def run(self, model1, model2):
        return _merge(model1, model2, lambda _k: 1.0, lambda _r: (1.0, 1.0))


class CLIPMergeSimple(Node):
    """Blends two text encoders: ratio 1 keeps clip1, 0 gives clip2."""

    category = CATEGORY
    inputs = [Input("clip1", "CLIP"), Input("clip2", "CLIP"), Float("ratio", 1.0, **_RATIO)]
    outputs = [Out("CLIP")]

    def run(self, clip1, clip2, ratio):
        from genloom.diffusion.errors import CheckpointError
        from genloom.diffusion.models.merging import merge_clips

        try:
            return (merge_clips(clip1, clip2, 1.0 - ratio, ratio),)
        except CheckpointError as exc:
            raise NodeInputError("clip2", str(exc)) from None


def _save(input_name, build, prefix, prompt, extra_pnginfo, suffix=""):
    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.saving import save_output

    try:
        tensors, meta = build()
    except CheckpointError as exc:
        raise NodeInputError(input_name, str(exc)) from None
    try:
        return save_output(f"{prefix}_{suffix}" if suffix else prefix, tensors, meta, prompt, extra_pnginfo)
    except UnsafePath as exc:
        raise NodeInputError("filename_prefix", str(exc)) from None


class CheckpointSave(Node):
    """Saves MODEL, CLIP and VAE as one checkpoint file (with every patch and merge applied)."""

    category = CATEGORY
    display_name = "Save Checkpoint"
    output_node = True
    inputs = [Input("model", "MODEL"), Input("clip", "CLIP"), Input("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI"), *_HIDDEN]
    outputs = []

    def run(self, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.models.saving import checkpoint_file

        _save("model", lambda: checkpoint_file(model, clip, vae), filename_prefix, prompt, extra_pnginfo)
        return NodeOutput()


class CLIPSave(Node):
    """Saves each text encoder of a CLIP as its own file (name suffixed with its role: clip_l...)."""

    category = CATEGORY
    output_node = True
    inputs = [Input("clip", "CLIP"), String("filename_prefix", "clip/ComfyUI"), *_HIDDEN]
    outputs = []

    def run(self, clip, filename_prefix, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.models.saving import clip_files

        for role, tensors in clip_files(clip):
            _save("clip", lambda t=tensors: (t, {"format": "pt"}), filename_prefix, prompt, extra_pnginfo, role)
        return NodeOutput()


class VAESave(Node):
    """Saves a VAE as a file in the original layout."""

    category = CATEGORY
    output_node = True
    inputs = [Input("vae", "VAE"), String("filename_prefix", "vae/ComfyUI_vae"), *_HIDDEN]
    outputs = []

    def run(self, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.models.saving import vae_file

        _save("vae", lambda: vae_file(vae), filename_prefix, prompt, extra_pnginfo)
        return NodeOutput()


NODES = [ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple,
         CheckpointSave, CLIPSave, VAESave]
