"""MODEL wrappers and callbacks as packs register them (comfy.patcher_extension): each node clones
the model and adds one wrapper type; CALLS records what the wrappers and callbacks saw (the tests
keep results with model_patch_pack's Keep)."""

import comfy.patcher_extension as pe
from comfy.patcher_extension import CallbacksMP, WrappersMP

CALLS = {"calc": [], "outer": [], "sampler": [], "callbacks": []}


class _Wrap:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "tests/compat"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0})}}


class ScaleApplyModel(_Wrap):
    """APPLY_MODEL: the denoised latent times `scale`."""

    def patch(self, model, scale):
        def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs) * scale

        m = model.clone()
        m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "scale", wrapper)
        return (m,)


class ScaleDiffusionModel(_Wrap):
    """DIFFUSION_MODEL: the network's output times `scale`."""

    def patch(self, model, scale):
        def wrapper(executor, x, timesteps, context, y=None, control=None, transformer_options={}, **kwargs):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs) * scale

        m = model.clone()
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "scale", wrapper)
        return (m,)


class RecordCalls(_Wrap):
    """CALC_COND_BATCH, OUTER_SAMPLE and SAMPLER_SAMPLE wrappers that record and pass on; OUTER_SAMPLE
    scales the noise by `scale`; the ON_PRE_RUN / ON_CLEANUP / ON_CLONE callbacks record too."""

    def patch(self, model, scale):
        def calc(executor, model, conds, x_in, timestep, model_options):
            CALLS["calc"].append((len(conds), tuple(x_in.shape), float(timestep[0])))
            return executor(model, conds, x_in, timestep, model_options)

        def outer(executor, noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                  **kwargs):
            CALLS["outer"].append((type(executor.class_obj).__name__, len(sigmas), seed))
            return executor(noise * scale, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                            seed, **kwargs)

        def sampler_sample(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
            sample_sigmas = extra_args["model_options"]["transformer_options"]["sample_sigmas"]
            CALLS["sampler"].append((executor.class_obj is not None, len(sample_sigmas), extra_args["seed"]))
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)

        m = model.clone()
        pe.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "record", calc, m.model_options, is_model_options=True)
        m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "record", outer)
        m.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "record", sampler_sample)
        m.add_callback_with_key(CallbacksMP.ON_PRE_RUN, "record", lambda p: CALLS["callbacks"].append("pre_run"))
        m.add_callback_with_key(CallbacksMP.ON_CLEANUP, "record", lambda p: CALLS["callbacks"].append("cleanup"))
        m.add_callback(CallbacksMP.ON_CLONE, lambda old, new: CALLS["callbacks"].append("clone"))
        twin = m.clone()
        assert twin.get_wrappers(WrappersMP.OUTER_SAMPLE, "record") == [outer]
        return (twin,)


NODE_CLASS_MAPPINGS = {"ScaleApplyModel": ScaleApplyModel, "ScaleDiffusionModel": ScaleDiffusionModel,
                       "RecordCalls": RecordCalls}
