"""MODEL patches as packs write them (clone, then set_...), a pack's own sampler function through
comfy.samplers.KSAMPLER and a CFGGuider subclass with its own predict_noise."""

import comfy.model_patcher
import comfy.samplers

CALLS = {"wrapper": [], "attn2": set()}


class _ModelIn:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "tests/compat"


class CondOnlyCFG(_ModelIn):
    """A cfg function that keeps the conditional prediction only (what cfg 1 computes)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        m = model.clone()
        assert isinstance(m, comfy.model_patcher.ModelPatcher)
        m.set_model_sampler_cfg_function(lambda args: args["cond"])
        return (m,)


class ScaleQueryAttn2(_ModelIn):
    """Cross-attention with its query source scaled (0: every token attended to alike)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 2.0})}}

    def patch(self, model, scale):
        def attn2(n, context, value, extra_options):
            CALLS["attn2"].add(extra_options["block"])
            return n * scale, context, value

        m = model.clone()
        m.set_model_attn2_patch(attn2)
        return (m,)


class CountingWrapper(_ModelIn):
    """A model_function_wrapper that only counts the calls it sees."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        def wrapper(apply_model, args):
            CALLS["wrapper"].append(list(args["cond_or_uncond"]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        m = model.clone()
        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


def pack_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, scale=1.0):
    """Euler's method on the probability-flow ODE, written the k-diffusion way."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i]) * scale
    return x


class PackEulerSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0})}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "tests/compat"

    def get_sampler(self, scale):
        return (comfy.samplers.KSAMPLER(pack_euler, extra_options={"scale": scale}),)


class CondOnlyGuider(comfy.samplers.CFGGuider):
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        cond, = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get("positive")], x, timestep,
                                               model_options)
        return cond


class CondOnlyGuiderNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",),
                             "negative": ("CONDITIONING",)}}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = "tests/compat"

    def get_guider(self, model, positive, negative):
        guider = CondOnlyGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(7.0)
        return (guider,)


class Keep:
    """Keeps a LATENT under a name for the test to read (an output node, so it always runs)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": "out"})}}

    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True
    CATEGORY = "tests/compat"

    def keep(self, samples, name):
        CALLS.setdefault("kept", {})[name] = samples["samples"].clone()
        return {"ui": {"kept": [name]}}


NODE_CLASS_MAPPINGS = {"Keep": Keep, "CondOnlyCFG": CondOnlyCFG, "ScaleQueryAttn2": ScaleQueryAttn2,
                       "CountingWrapper": CountingWrapper, "PackEulerSampler": PackEulerSampler,
                       "CondOnlyGuider": CondOnlyGuiderNode}
