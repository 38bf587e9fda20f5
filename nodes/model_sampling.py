"""ComfyUI's ModelSampling* nodes: each returns a copy of the MODEL that samples differently (its
prediction type and sigma table); the input MODEL is never changed, so cached outputs stay right.
The tables are genloom.diffusion.sampling.model_sampling, imported inside `run`."""

from genloom.engine.node import Boolean, Combo, Float, Input, Int, Node, Out

_CAT = "advanced/model"
_MODEL = Input("model", "MODEL")
_SHIFT_MAX = 100.0


def _ms():
    from genloom.diffusion.sampling import model_sampling

    return model_sampling


class ModelSamplingDiscrete(Node):
    """DDPM noise levels of the model's own schedule with a chosen prediction type: eps,
    v_prediction, lcm (LCM's 50-level distilled table and boundary condition), x0, img_to_img (x0
    from the unscaled input). zsnr rescales the table to zero terminal SNR."""

    category = _CAT
    inputs = [_MODEL, Combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
              Boolean("zsnr", False)]
    outputs = [Out("MODEL")]

    def run(self, model, sampling, zsnr):
        ms = _ms()
        table = ms.of_config(model, sampling, bool(zsnr))
        if sampling == "lcm":
            table = ms.distilled(table)
        return (model.with_sampling(table),)


class ModelSamplingContinuousEDM(Node):
    """Continuous log-spaced noise levels: v_prediction, edm (sigma_data 0.5), edm_playground_v2.5
    (edm, and Playground v2.5's latent format), eps, cosmos_rflow."""

    category = _CAT
    inputs = [_MODEL, Combo("sampling", ["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"]),
              Float("sigma_max", 120.0, min=0.0, max=1000.0, step=0.001, round=False),
              Float("sigma_min", 0.002, min=0.0, max=1000.0, step=0.001, round=False)]
    outputs = [Out("MODEL")]

    def run(self, model, sampling, sigma_max, sigma_min):
        from dataclasses import replace

        from genloom.diffusion.sampling import latent_formats

        edm = sampling.startswith("edm")
        patched = model.with_sampling(_ms().edm("edm" if edm else sampling, sigma_min, sigma_max,
                                                sigma_data=0.5 if edm else 1.0))
        if sampling == "edm_playground_v2.5":
            patched = replace(patched, latent_format=latent_formats.PLAYGROUND_2_5)
        return (patched,)


class ModelSamplingSD3(Node):
    """Rectified flow with the SD3 timestep shift (timestep = sigma * 1000)."""

    category = _CAT
    inputs = [_MODEL, Float("shift", 3.0, min=0.0, max=_SHIFT_MAX, step=0.01)]
    outputs = [Out("MODEL")]

    def run(self, model, shift):
        return (model.with_sampling(_ms().flow(shift, multiplier=1000.0)),)


class ModelSamplingAuraFlow(Node):
    """Rectified flow with shift and timestep = sigma (multiplier 1)."""

    category = _CAT
    inputs = [_MODEL, Float("shift", 1.73, min=0.0, max=_SHIFT_MAX, step=0.01)]
    outputs = [Out("MODEL")]

    def run(self, model, shift):
        return (model.with_sampling(_ms().flow(shift, multiplier=1.0)),)


class ModelSamplingFlux(Node):
    """Flux's resolution-dependent shift: mu linear in the token count."""

    category = _CAT
    inputs = [_MODEL, Float("max_shift", 1.15, min=0.0, max=_SHIFT_MAX, step=0.01),
              Float("base_shift", 0.5, min=0.0, max=_SHIFT_MAX, step=0.01),
              Int("width", 1024, min=16, max=16384, step=8), Int("height", 1024, min=16, max=16384, step=8)]
    outputs = [Out("MODEL")]

    def run(self, model, max_shift, base_shift, width, height):
        ms = _ms()
        return (model.with_sampling(ms.flux(ms.flux_mu(width, height, max_shift, base_shift))),)


class ModelSamplingStableCascade(Node):
    category = _CAT
    inputs = [_MODEL, Float("shift", 2.0, min=0.0, max=_SHIFT_MAX, step=0.01)]
    outputs = [Out("MODEL")]

    def run(self, model, shift):
        return (model.with_sampling(_ms().cascade(shift)),)


NODES = [ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingSD3, ModelSamplingAuraFlow,
         ModelSamplingFlux, ModelSamplingStableCascade]
