"""Core nodes from `nodes`, called with ComfyUI's method names and argument orders, and subclassed."""

import comfy.samplers
import folder_paths
import nodes
from nodes import MAX_RESOLUTION, common_ksampler


class QuickImage:
    """Checkpoint -> prompt -> empty latent -> common_ksampler -> decode, all through `nodes`."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                             "text": ("STRING", {"default": "a red circle"}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 32}),
                             "steps": ("INT", {"default": 3, "min": 1, "max": 50}),
                             "size": ("INT", {"default": 32, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                             "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                             "scheduler": (comfy.samplers.KSampler.SCHEDULERS,)}}

    RETURN_TYPES = ("IMAGE", "LATENT")
    FUNCTION = "make"
    CATEGORY = "tests/compat"

    def make(self, ckpt_name, text, seed, steps, size, sampler_name, scheduler):
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)
        positive = nodes.CLIPTextEncode().encode(clip, text)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]
        sampled = common_ksampler(model, seed, steps, 3.0, sampler_name, scheduler, positive, negative,
                                  latent)[0]
        return (nodes.VAEDecode().decode(vae, sampled)[0], sampled)


class OffsetSeedKSampler(nodes.KSampler):
    """KSampler with one more input: the seed is offset before sampling."""

    @classmethod
    def INPUT_TYPES(cls):
        types = super().INPUT_TYPES()
        types["required"]["seed_offset"] = ("INT", {"default": 0, "min": 0, "max": 1000})
        return types

    FUNCTION = "sample_offset"
    CATEGORY = "tests/compat"

    def sample_offset(self, seed_offset, seed, **kwargs):
        return self.sample(seed=seed + seed_offset, **kwargs)


NODE_CLASS_MAPPINGS = {"QuickImage": QuickImage, "OffsetSeedKSampler": OffsetSeedKSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"QuickImage": "Quick image (core nodes)"}
