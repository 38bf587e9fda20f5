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
    """DDPM noise levels with a chosen prediction type (zsnr: rescaled to zero terminal SNR)."""

    category = _CAT
    # lcm and img_to_img (ComfyUI's other two) need prediction wrappers genloom does not have yet.
    inputs = [_MODEL, Combo("sampling", ["eps", "v_prediction", "x0"]), Boolean("zsnr", False)]
    outputs = [Out("MODEL")]

    def run(self, model, sampling, zsnr):
        from dataclasses import replace

        base = _ms().of_model(replace(model, sampling=None))
        table = _ms().zero_terminal_snr(base.sigmas).float() if zsnr else base.sigmas
        return (model.with_sampling(base.with_(prediction=sampling, table="discrete", sigmas=table)),)


class ModelSamplingContinuousEDM(Node):
    category = _CAT
    inputs = [_MODEL, Combo("sampling", ["v_prediction", "edm", "eps"]),
              Float("sigma_max", 120.0, min=0.0, max=1000.0, step=0.001, round=False),
              Float("sigma_min", 0.002, min=0.0, max=1000.0, step=0.001, round=False)]
    outputs = [Out("MODEL")]

    def run(self, model, sampling, sigma_max, sigma_min):
        return (model.with_sampling(_ms().edm(sampling, sigma_min, sigma_max)),)


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
