"""ControlNets and T2I-Adapters while sampling, as ComfyUI applies them.

A CONTROL_NET socket carries a `ControlModel` (the loaded network). The apply nodes put a `Control`
(that network with a hint image, a strength and a start/end percent) in each CONDITIONING entry's
dict under "control"; a second apply node chains its Control to the one already there
("previous"), so several stack. Guidance hands the Control to the model handle as a shared extra
(`ModelHandle.cond_extras`), and the handle's `predict` asks it for the UNet's extra inputs:

    down/mid residuals    ControlNets: the network on (x, t, text embedding, hint), times strength
    intrablock residuals  T2I-Adapters: the adapter's features of the hint (computed once), times strength
    block residuals       Flux / SD3 ControlNets (diffusers layout): the network on the transformer's
                          inputs and the VAE-encoded hint, spread over the transformer's blocks
                          (`flux_inputs`, `sd3_inputs`; docs/controlnet.md "Flux and SD3")

summed over every Control of the chain that is live at the step's sigma (start/end percent through
the model sampling's percent_to_sigma, as ComfyUI). Guidance knows that sigma and hands the handle a
view of the chain bound to it (`Control.at_sigma`). The hint is resized to the latent's pixel size
(nearest-exact, centre crop, as ComfyUI) and repeated over the batch; an inpainting ControlNet
(AliMama's) gets the apply node's mask beside its hint latent as one more channel (`Control.mask`;
docs/controlnet.md "AliMama inpainting"). A control-LoRA's ControlNet is made from the sampled model's
UNet at its first call (models/control_files.py ControlLora).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .errors import SamplingError
from .models.control_files import ADAPTER, CONTROL_LORA, FLUX_CONTROLNET, SD3_CONTROLNET
from .models.owner import model_owner

# SetUnionControlNetType's choices (ComfyUI's names and numbers).
UNION_TYPES = {"openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2, "canny/lineart/anime_lineart/mlsd": 3,
               "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


@dataclass(frozen=True, eq=False)
class ControlModel:
    """A loaded ControlNet or T2I-Adapter (CONTROL_NET). Never mutated: nodes return copies."""

    module: Any  # diffusers ControlNetModel or T2IAdapter (base weights on the CPU), or a ControlLora
    kind: str  # "controlnet" | "t2i_adapter" | "control_lora"
    family: str = "sd"  # "sd" | "sdxl": the UNets it fits
    name: str = ""
    extra: tuple = ()  # ((name, value), ...): SetUnionControlNetType's control_type

    @property
    def takes_latents(self) -> bool:
        """Flux and SD3 ControlNets take the hint VAE-encoded (the apply node's vae input), not in pixels;
        XLabs' Flux ones encode the pixels themselves (their input_hint_block)."""
        return self.kind in (FLUX_CONTROLNET, SD3_CONTROLNET) and getattr(self.module, "input_hint_block", None) is None

    @property
    def concat_mask(self) -> bool:
        """AliMama's inpainting ControlNets: their hint is the latent with the mask beside it, one
        channel more (ComfyUI's concat_mask); the loader reads no other extra width."""
        if self.kind == SD3_CONTROLNET:
            return bool(getattr(self.module.config, "extra_conditioning_channels", 0))
        if self.kind == FLUX_CONTROLNET:
            return self.module.controlnet_x_embedder.in_features != self.module.x_embedder.in_features
        return False

    def with_extra(self, **changes) -> "ControlModel":
        return replace(self, extra=tuple({**dict(self.extra), **changes}.items()))


@dataclass(eq=False)
class Control:
    """One application of a ControlModel; `previous` is the one it stacks on."""

    model: ControlModel
    hint: Any  # [B, C, H, W] 0..1 on the CPU
    strength: float = 1.0
    percent: tuple = (0.0, 1.0)
    previous: "Control | None" = None
    vae: Any = None  # accepted as ComfyUI does; SD/SDXL ControlNets take the hint in pixels
    mask: Any = None  # [B, 1, H, W], 1 = keep: the extra hint channel of an inpainting ControlNet
    _cache: dict = field(default_factory=dict, repr=False)

    def chain(self) -> list["Control"]:
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.previous
        return out[::-1]

    def _sigmas(self, handle) -> tuple:
        """(model sampling, [(sigma at start_percent, at end_percent) per Control of the chain]),
        worked out once per model: building the model sampling costs more than a tiny UNet call."""
        import weakref

        from .sampling.model_sampling import of_model

        found = self._cache.get(("sigmas",))
        if found is None or found[0]() is not handle:  # a weak reference: the model is not kept alive
            ms = of_model(handle)
            found = (weakref.ref(handle), ms, [(ms.percent_to_sigma(c.percent[0]), ms.percent_to_sigma(c.percent[1]))
                                  for c in self.chain()])
            self._cache[("sigmas",)] = found
        return found[1], found[2]

    def at_sigma(self, sigma: float) -> "_AtSigma":
        """This chain for one model call at `sigma` (what guidance hands the model handle)."""
        return _AtSigma(self, float(sigma))

    def unet_inputs(self, handle, x, t, emb, added: dict, sigma: float | None = None) -> dict:
        """The UNet's extra keyword arguments for this step from every live Control of the chain.
        `sigma`: the step's noise level; without it (a caller that knows only the timestep) it is
        the timestep's table level, which can differ from the step's sigma between levels."""
        down = mid = intra = None
        for c in self._live(handle, t, sigma):
            if c.model.kind in (FLUX_CONTROLNET, SD3_CONTROLNET):
                raise SamplingError(f"ControlNet {c.model.name!r} is a {c.model.family} ControlNet: it does not "
                                    "fit this model")
            if c.model.kind == ADAPTER:
                feats = c._adapter_features(handle, x)
                intra = feats if intra is None else [a + b for a, b in zip(intra, feats)]
            else:
                d, m = c._controlnet(handle, x, t, emb, added)
                down = d if down is None else [a + b for a, b in zip(down, d)]
                mid = m if mid is None else mid + m
        out = {}
        if down is not None:
            out["down_block_additional_residuals"] = tuple(down)
            out["mid_block_additional_residual"] = mid
        if intra is not None:
            out["down_intrablock_additional_residuals"] = list(intra)  # the UNet pops from it
        return out

    def _live(self, handle, t, sigma: float | None) -> list["Control"]:
        """The Controls of the chain whose start/end window holds `sigma` (the timestep's table level
        when it is unknown)."""
        ms, ranges = self._sigmas(handle)
        if sigma is None:
            sigma = float(ms.sigma(t.reshape(-1)[0].float().cpu()))
        return [c for c, (hi, lo) in zip(self.chain(), ranges) if lo <= sigma <= hi]

    def _live_of(self, handle, t, sigma, kind: str, family: str) -> list["Control"]:
        """The live Controls, each checked to be a ControlNet of the model's family."""
        live = self._live(handle, t, sigma)
        for c in live:
            if c.model.kind != kind:
                raise SamplingError(f"ControlNet {c.model.name!r} is not a {family} ControlNet: it does not fit "
                                    f"this {family} model")
        return live

    def flux_inputs(self, handle, x, call: dict, sigma: float | None = None) -> dict:
        """The Flux transformer's block residuals for this step (controlnet_block_samples,
        controlnet_single_block_samples) from every live Control of the chain, each network's list
        stretched to the transformer's depth (its i-th sample on blocks i*k .. i*k+k-1, k = ceil(depth
        / samples), as diffusers and ComfyUI spread them) and summed. XLabs' ControlNets (a pixel hint
        encoder) take the hint in pixels, -1..1, and their samples cycle over the blocks instead (block
        j gets sample j mod samples: ComfyUI's ControlNetFlux, diffusers' controlnet_blocks_repeat).
        `x`: the latent before packing; `call`: the transformer's own inputs (packed tokens, text,
        pooled, timestep, ids, guidance)."""
        import torch

        from .models.flux_model import _pad_even, pack

        depth = (len(handle.unet.transformer_blocks), len(handle.unet.single_transformer_blocks))
        sums: list = [None, None]
        for c in self._live_of(handle, call["timestep"], sigma, FLUX_CONTROLNET, "Flux"):
            net = c.model.module
            guidance = call.get("guidance")
            if not net.config.guidance_embeds:
                guidance = None
            elif guidance is None:
                guidance = torch.zeros(x.shape[0], device=x.device)
            pixels = getattr(net, "input_hint_block", None) is not None  # XLabs-style
            if pixels:  # at the padded latent's pixel size: the encoder's output is packed as the latent
                hint = c._hint(_pad_even(x), int(handle.vae_scale_factor), 3)[:, :3] * 2.0 - 1.0
            else:
                hint = pack(_pad_even(c._latent_hint(handle, x, shifted=True)))  # padded as the latent is
            mode = {}
            if net.config.num_mode:  # a union ControlNet: its mode is SetUnionControlNetType's number
                (kind,) = c._union_types(net.config.num_mode)
                mode["controlnet_mode"] = torch.full((x.shape[0], 1), kind, dtype=torch.long, device=x.device)
            with model_owner().memory.use(net, str(x.device), x.dtype, name="ControlNet") as net:
                outs = net(**{**call, "guidance": guidance}, controlnet_cond=hint,
                           conditioning_scale=float(c.strength), return_dict=False, **mode)
            for i, (samples, n) in enumerate(zip(outs, depth)):
                if samples:
                    k = -(-n // len(samples))
                    pick = (lambda j: j % len(samples)) if pixels else (lambda j: j // k)
                    sums[i] = _add(sums[i], [samples[pick(j)] for j in range(n)])
        return {name: value for name, value in zip(("controlnet_block_samples", "controlnet_single_block_samples"),
                                                   sums) if value is not None}

    def sd3_inputs(self, handle, x, t, emb, pooled, sigma: float | None = None) -> dict:
        """The SD3 transformer's block residuals (block_controlnet_hidden_states, one per joint
        block, the last included: the handle adds that one itself) from every live Control: the
        network gets zeros for the pooled text when its config says so (InstantX's), the text unless
        it has no context embedder. ComfyUI's spreading: InstantX's i-th output goes to blocks
        i*k .. i*k+k-1, k = depth // outputs, less the last of them (so the last block gets none);
        SD3.5's official ControlNets' to every block, k = ceil(depth / outputs) a piece. Those
        (models/control_sd35.py) take no text, ComfyUI's image tokens (`input_tokens`), the real
        pooled text and the hint latent with the format's shift, prepared by their control type."""
        import torch

        from .models.control_sd35 import hint_transform, input_tokens

        depth = len(handle.unet.transformer_blocks)
        total = None
        for c in self._live_of(handle, t, sigma, SD3_CONTROLNET, "SD3"):
            net = c.model.module
            tokens = x
            sd35 = net.pos_embed is None
            if sd35:
                if handle.unet.inner_dim != net.inner_dim:
                    raise SamplingError(f"ControlNet {c.model.name!r} does not fit this model: it is "
                                        f"{net.inner_dim} wide, the model {handle.unet.inner_dim}")
                tokens = input_tokens(handle.unet, x)
            zeros = net.config.force_zeros_for_pooled_projection
            prepare = hint_transform(getattr(net, "hint_kind", ""))
            hint = c._latent_hint(handle, x, shifted=not zeros, prepare=prepare)
            with model_owner().memory.use(net, str(x.device), x.dtype, name="ControlNet") as net:
                (outs,) = net(hidden_states=tokens, controlnet_cond=hint, conditioning_scale=float(c.strength),
                              encoder_hidden_states=emb if net.context_embedder is not None else None, timestep=t,
                              pooled_projections=torch.zeros_like(pooled) if zeros else pooled, return_dict=False)
            k = -(-depth // len(outs)) if sd35 else depth // len(outs)
            used = depth if sd35 else k * len(outs) - 1
            total = _add(total, [outs[j // k] if j < used else torch.zeros_like(outs[0]) for j in range(depth)])
        return {} if total is None else {"block_controlnet_hidden_states": total}

    def _latent_hint(self, handle, x, shifted: bool, prepare=None):
        """The hint as latents: resized to the latent's pixel size (nearest-exact, centre crop),
        `prepare`d (pixels -> pixels, before the VAE), VAE-encoded, in the model's latent format
        (InstantX's SD3 ControlNets without its shift, as ComfyUI and diffusers' InstantX pipeline);
        an inpainting ControlNet's mask beside it (`_with_mask`); one per row of x. Worked out once per size."""
        from .resample import resize
        from .sampling import latent_formats

        scale = int(handle.vae_scale_factor)
        h, w = x.shape[2] * scale, x.shape[3] * scale
        key = ("latent_hint", h, w, x.shape[0], str(x.device), x.dtype)
        if key not in self._cache:
            if self.vae is None:
                raise SamplingError(f"ControlNet {self.model.name!r} takes its hint as latents: connect a VAE "
                                    "to the apply node's vae input")
            pixels = self.hint if tuple(self.hint.shape[2:]) == (h, w) else resize(self.hint, w, h, "nearest-exact",
                                                                                    "center")
            pixels = pixels if prepare is None else prepare(pixels)
            fmt = latent_formats.of_model(handle)
            latent = self.vae.encode(pixels.movedim(1, -1)[..., :3]).float()
            latent = fmt.process_in(latent) if shifted else latent * fmt.scale
            if self.model.concat_mask:
                latent = self._with_mask(latent)
            self._keep(key, _rows(latent, x.shape[0]).to(x.device, x.dtype))
        return self._cache[key]

    def _with_mask(self, latent):
        """The latent with the mask as one more channel, resized to it (nearest-exact, centre crop)
        and repeated over its rows, as ComfyUI's extra_concat; no mask (an apply node without one)
        is all ones: nothing to repaint."""
        import torch

        from .resample import resize

        mask = torch.ones(1, 1, 1, 1) if self.mask is None else self.mask
        mask = resize(mask.float(), latent.shape[3], latent.shape[2], "nearest-exact", "center")
        return torch.cat([latent, _rows(mask.to(latent.device, latent.dtype), latent.shape[0])], dim=1)

    def _hint(self, x, scale: int, channels: int, rows: int | None = None):
        """The hint at the latent's pixel size on x's device, one per row of x (or `rows` rows)."""
        from .resample import resize

        h, w = x.shape[2] * scale, x.shape[3] * scale
        rows = x.shape[0] if rows is None else rows
        key = ("hint", h, w, rows, str(x.device), x.dtype)
        if key not in self._cache:
            hint = self.hint
            if tuple(hint.shape[2:]) != (h, w):
                hint = resize(hint, w, h, "nearest-exact", "center")
            if channels == 1 and hint.shape[1] == 3:
                hint = hint.mean(dim=1, keepdim=True)
            self._keep(key, _rows(hint, rows).to(x.device, x.dtype))
        return self._cache[key]

    def _keep(self, key: tuple, value) -> None:
        """Cache `value`, dropping the older entry of its kind (one hint, one feature set)."""
        for old in [k for k in self._cache if k[0] == key[0]]:
            del self._cache[old]
        self._cache[key] = value

    def _controlnet(self, handle, x, t, emb, added: dict):
        net = self.model.module
        if self.model.kind == CONTROL_LORA:  # made from the model being sampled, as it is now
            net = net.network(handle.unet, getattr(handle, "patches", ()))
        if net.config.cross_attention_dim != emb.shape[-1]:
            raise SamplingError(f"ControlNet {self.model.name!r} does not fit this model: it takes "
                                f"{net.config.cross_attention_dim}-wide text embeddings, the model gives "
                                f"{emb.shape[-1]} (a ControlNet made for another model family?)")
        hint = self._hint(x, int(handle.vae_scale_factor), net.config.conditioning_channels)
        kwargs = {"added_cond_kwargs": added} if added else {}
        if hasattr(net.config, "num_control_type"):
            kwargs.update(self._union_inputs(net, hint))
            hint = [hint]
        with model_owner().memory.use(net, str(x.device), x.dtype, name="ControlNet") as net:
            down, mid = net(x, t, encoder_hidden_states=emb, controlnet_cond=hint,
                            conditioning_scale=float(self.strength), return_dict=False, **kwargs)
        return list(down), mid

    def _union_types(self, count: int) -> list:
        """A union ControlNet's hint type ([number], SetUnionControlNetType's), one of its `count`."""
        types = list(dict(self.model.extra).get("control_type") or [])
        if len(types) != 1 or not 0 <= types[0] < count:
            raise SamplingError(f"ControlNet {self.model.name!r} is a union ControlNet: set the kind of hint "
                                "with SetUnionControlNetType (genloom does not guess it: 'auto' is not "
                                "supported)")
        return types

    def _union_inputs(self, net, hint) -> dict:
        """A union ControlNet's hint type (SetUnionControlNetType) as its one-hot control_type."""
        import torch

        types = self._union_types(net.config.num_control_type)
        control_type = torch.zeros(hint.shape[0], net.config.num_control_type, device=hint.device,
                                   dtype=hint.dtype)
        control_type[:, types[0]] = 1
        return {"control_type": control_type, "control_type_idx": types}

    def _adapter_features(self, handle, x):
        """The adapter's features of the hint (they depend on nothing else), times strength."""
        import torch

        adapter = self.model.module
        wants = list(handle.unet.config.block_out_channels)[:1]
        if list(adapter.config.channels)[:1] != wants:
            raise SamplingError(f"T2I-Adapter {self.model.name!r} does not fit this model: its first "
                                f"features are {adapter.config.channels[0]} wide, the model's first "
                                f"block {wants[0]} (an adapter made for another model family?)")
        hint = self._hint(x, int(handle.vae_scale_factor), adapter.config.in_channels, rows=self.hint.shape[0])
        key = ("features", tuple(hint.shape), str(x.device), x.dtype)
        feats = self._cache.get(key)
        if feats is None:
            with torch.no_grad(), model_owner().memory.use(adapter, str(x.device), x.dtype,
                                                           name="T2IAdapter") as net:
                feats = [f * float(self.strength) for f in net(hint)]
            self._keep(key, feats)
        return [_rows(f, x.shape[0]) for f in feats]


@dataclass(frozen=True)
class _AtSigma:
    """A Control chain bound to the sigma of one model call: the handle asks it as it asks a Control."""

    control: Control
    sigma: float

    def unet_inputs(self, handle, x, t, emb, added: dict) -> dict:
        return self.control.unet_inputs(handle, x, t, emb, added, self.sigma)

    def flux_inputs(self, handle, x, call: dict) -> dict:
        return self.control.flux_inputs(handle, x, call, self.sigma)

    def sd3_inputs(self, handle, x, t, emb, pooled) -> dict:
        return self.control.sd3_inputs(handle, x, t, emb, pooled, self.sigma)


def _add(total, parts: list) -> list:
    """Residual lists summed elementwise (`total` None: the first)."""
    return list(parts) if total is None else [a + b for a, b in zip(total, parts)]


def _rows(t, n: int):
    """`t` repeated along the batch to `n` rows (a batch of hints cycles, as per conditioning)."""
    if t.shape[0] == n:
        return t
    reps = -(-n // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:n]


def apply_control(conditionings: list, model: ControlModel, image, strength: float, percent: tuple,
                  vae=None, mask=None) -> list:
    """ControlNetApply(Advanced): every entry of each CONDITIONING list gets a Control stacked on
    the one it had; entries that shared a Control share the new one (so positive and negative are
    still evaluated in one batch). `mask`: an inpainting ControlNet's extra hint channel."""
    hint = image.movedim(-1, 1).float()
    made: dict[int, Control] = {}
    out = []
    for conditioning in conditionings:
        entries = []
        for emb, extra in conditioning:
            extra = dict(extra)
            prev = extra.get("control")
            if id(prev) not in made:
                made[id(prev)] = Control(model, hint, float(strength), tuple(percent), prev, vae, mask)
            extra["control"] = made[id(prev)]
            extra["control_apply_to_uncond"] = False
            entries.append([emb, extra])
        out.append(entries)
    return out


@dataclass(frozen=True, eq=False)
class LoadedControl:
    """What the loaded-model cache keeps for one control file (it holds dataclasses of handles)."""

    control: ControlModel


def load_control_model(path, base_unet=None) -> LoadedControl:
    """A ControlNet / T2I-Adapter file as a CONTROL_NET (models/control_files.py reads the layouts)."""
    from pathlib import Path

    from .models.control_files import load_control

    module, kind, family = load_control(Path(path), base_unet)
    return LoadedControl(ControlModel(module, kind, family, Path(path).stem))
