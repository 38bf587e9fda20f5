"""Model patches of ComfyUI's core that change how the UNet or guidance computes (FreeU, FreeU_V2,
RescaleCFG, DifferentialDiffusion). Nodes put them into a patched copy's model_options; nothing
here touches a loaded module's weights.

Output-block patches (ComfyUI's transformer_options["patches"]["output_block_patch"]): a function
fn(h, hsp, transformer_options) -> (h, hsp) that sees, at every decoder (output) block, the hidden
state coming up `h` and the skip connection `hsp` before they are concatenated. On a diffusers
UNet that point is the input of each up-block resnet: `output_block_patched` installs pre-forward
hooks there for the duration of a `use()` and splits the resnet's input into (h, hsp) by channels.
"""

from __future__ import annotations

from contextlib import contextmanager

OUTPUT_BLOCK_PATCH = "output_block_patch"


def output_block_patches(model_options: dict) -> list:
    to = (model_options or {}).get("transformer_options") or {}
    return list((to.get("patches") or {}).get(OUTPUT_BLOCK_PATCH) or [])


def _hidden_channels(unet) -> dict:
    """{up-block resnet module: channels of the hidden state before the skip is appended}."""
    out = {}
    widths = list(reversed(list(unet.config.block_out_channels)))
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        previous = widths[max(i - 1, 0)]
        for j, resnet in enumerate(getattr(block, "resnets", [])):
            out[resnet] = previous if j == 0 else widths[i]
    return out


@contextmanager
def output_block_patched(unet, model_options: dict):
    """While inside, every output-block patch of `model_options` runs at each up-block resnet."""
    fns = output_block_patches(model_options)
    if not fns or not hasattr(unet, "up_blocks"):
        yield unet
        return
    import torch

    from .models.attention import _CALL

    static = (model_options or {}).get("transformer_options") or {}

    def hook_for(channels):
        def pre(_module, args, kwargs):
            x = args[0] if args else kwargs["input_tensor"]
            h, hsp = x[:, :channels], x[:, channels:]
            options = _CALL.get() or static
            for fn in fns:
                h, hsp = fn(h, hsp, options)
            joined = torch.cat([h, hsp], dim=1)
            if args:
                return (joined, *args[1:]), kwargs
            return args, {**kwargs, "input_tensor": joined}
        return pre

    handles = [resnet.register_forward_pre_hook(hook_for(c), with_kwargs=True)
               for resnet, c in _hidden_channels(unet).items()]
    try:
        yield unet
    finally:
        for handle in handles:
            handle.remove()


# ---- FreeU ------------------------------------------------------------------------------------

def fourier_filter(x, threshold: int, scale: float):
    """Scale the lowest spatial frequencies (a 2*threshold square around DC) of x by `scale`."""
    import torch

    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    gain = torch.ones(freq.shape[-2:], device=x.device)
    gain[h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * gain, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, v2: bool = False):
    """ComfyUI's FreeU (v2: backbone gain modulated by the normalised channel mean): at hidden
    states of 4x the model's base channels, (b1, s1); at 2x, (b2, s2); elsewhere unchanged."""
    import torch

    table = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def patch(h, hsp, _options):
        found = table.get(int(h.shape[1]))
        if found is None:
            return h, hsp
        b, s = found
        half = h.shape[1] // 2
        gain = b
        if v2:
            mean = h.mean(1, keepdim=True)
            flat = mean.reshape(mean.shape[0], -1)
            lo = flat.min(-1).values.reshape(-1, 1, 1, 1)
            hi = flat.max(-1).values.reshape(-1, 1, 1, 1)
            gain = (b - 1.0) * (mean - lo) / (hi - lo) + 1.0
        h = torch.cat([h[:, :half] * gain, h[:, half:]], dim=1)
        try:
            hsp = fourier_filter(hsp, 1, s)
        except (RuntimeError, TypeError):  # a device without torch.fft: on the CPU
            hsp = fourier_filter(hsp.cpu(), 1, s).to(hsp.device)
        return h, hsp

    return patch


def with_output_block_patch(model, patch):
    """A copy of MODEL with `patch` appended to its output-block patches."""
    m = model.clone()
    m.set_model_patch(patch, OUTPUT_BLOCK_PATCH)
    return m.handle


# ---- RescaleCFG -------------------------------------------------------------------------------

def rescale_cfg(multiplier: float):
    """ComfyUI's RescaleCFG as a sampler_cfg_function: CFG done on the v-prediction the EPS-style
    outputs imply, its per-sample std brought back toward the conditional one by `multiplier`."""
    import torch

    def cfg_function(args):
        cond, uncond, scale = args["cond"], args["uncond"], args["cond_scale"]
        x_orig = args["input"]
        sigma = args["sigma"].reshape(-1, *([1] * (cond.ndim - 1)))
        root = (sigma ** 2 + 1.0) ** 0.5
        x = x_orig / (sigma ** 2 + 1.0)
        v_cond = (x - (x_orig - cond)) * root / sigma
        v_uncond = (x - (x_orig - uncond)) * root / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        dims = tuple(range(1, cond.ndim))
        rescaled = v_cfg * (torch.std(v_cond, dim=dims, keepdim=True) / torch.std(v_cfg, dim=dims, keepdim=True))
        v_final = multiplier * rescaled + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / root)

    return cfg_function


# ---- DifferentialDiffusion --------------------------------------------------------------------

def differential_mask(strength: float = 1.0):
    """ComfyUI's DifferentialDiffusion denoise_mask_function: at each step, the part of a soft
    noise mask at or above how far sampling still has to go (in timesteps, from the run's first
    sigma down to its last, or the model's smallest sigma when the last is below it) is
    regenerated; strength < 1 blends the step's mask with the soft one."""
    def fn(sigma, denoise_mask, extra_options):
        import torch

        ms = extra_options["model_sampling"]
        sigmas = extra_options["sigmas"]
        sigma_to = max(float(ms.sigma_min), float(sigmas[-1]))
        now = float(torch.as_tensor(sigma).reshape(-1)[0])
        ts = [float(ms.timestep(torch.as_tensor(float(s)))) for s in (sigmas[0], sigma_to, now)]
        threshold = (ts[2] - ts[1]) / (ts[0] - ts[1])
        binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * denoise_mask
        return binary

    return fn
