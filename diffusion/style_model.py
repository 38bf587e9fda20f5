"""Style models (ComfyUI's STYLE_MODEL): image tokens appended to a text conditioning.

Files in the `style_models` folder are told apart by their keys:
  Flux Redux   `redux_up.{weight,bias}` [3 * D, C] and `redux_down.{weight,bias}` [D, 3 * D]
               (flux1-redux-dev: C = 1152, SigLIP So400m's width; D = 4096, T5-XXL's): each of the
               vision tower's last_hidden_state tokens becomes redux_down(silu(redux_up(token))).
  SD1 T2I    TencentARC's style adapter (t2iadapter_style_sd14v1): `style_embedding` [1, N, W]
  style      (N learned tokens, 8 in the release), `ln_pre`, `transformer_layes.{i}.*` (a CLIP-style
  adapter    residual attention block each: ln_1, attn (in_proj, out_proj), ln_2, mlp.c_fc /
             mlp.c_proj with quick_gelu), `ln_post`, `proj` [W, D]. The N tokens are appended to the
             vision tower's last_hidden_state (W = 1024: CLIP ViT-L/14's), the whole sequence goes
             through ln_pre and the blocks, and the last N come out as ln_post(.) @ proj: N new
             D-wide (768, SD1's context) conditioning tokens per picture. Width, token count,
             context width and depth come from the shapes; the head count, which shapes cannot
             show, is the release's 8 (ComfyUI builds the same network with 8 heads).

StyleModelApply's arithmetic is ComfyUI's: the tokens of every picture in the batch are put one
after the other into a single sequence, appended to each conditioning entry's tokens. With
strength_type "multiply" they are scaled by `strength`; with "attn_bias" (strength != 1) they
are left as they are and the entry gets an additive attention mask instead: log(strength) on
the columns of the new tokens, for the text rows and the image rows, over the joint
[text, new tokens, image] sequence. The image part of that mask is `attention_mask_img_shape`
cells (1 x 1 by default) that the model stretches to its image tokens; an entry that already
had a mask keeps it, moved around the new columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import CheckpointError

STRENGTH_TYPES = ("multiply", "attn_bias")
ADAPTER_HEADS = 8  # the SD1 style adapter's attention heads (the release's; not in the file)


class VisionMismatch(ValueError):
    """CLIP vision tokens of another width than the style model takes (the clip_vision_output's fault)."""


@dataclass(frozen=True, eq=False)
class StyleModel:
    module: Any  # tokens [B, T, C] -> [B, N, D]
    kind: str = "redux"
    name: str = ""
    width: int = 0  # C, the vision tokens' width the module takes

    def get_cond(self, clip_vision_output):
        """The picture tokens for a CLIP_VISION_OUTPUT (from its last_hidden_state)."""
        import torch

        from genloom.diffusion.models.owner import model_owner

        hidden = clip_vision_output["last_hidden_state"]
        if hidden.shape[-1] != self.width:
            raise VisionMismatch(f"the style model takes {self.width}-wide CLIP vision tokens but the "
                                 f"clip_vision_output's are {hidden.shape[-1]} wide: encode the picture with "
                                 "the CLIP vision model it was made for")
        with torch.no_grad(), model_owner().memory.use(self.module, None) as module:
            param = next(module.parameters())
            return module(hidden.to(param.device, param.dtype)).float().cpu()


@dataclass(frozen=True, eq=False)
class StyleBundle:
    """What the loaded-model cache keeps for one file (owner.LoadedModels holds its fields weakly)."""

    style_model: StyleModel


def redux_module(state: dict):
    """The Redux projection (two linear layers around a SiLU) with the file's weights."""
    import torch

    class Redux(torch.nn.Module):
        def __init__(self, width: int, hidden: int, out: int):
            super().__init__()
            self.redux_up = torch.nn.Linear(width, hidden)
            self.redux_down = torch.nn.Linear(hidden, out)

        def forward(self, x):
            return self.redux_down(torch.nn.functional.silu(self.redux_up(x)))

    up, down = state["redux_up.weight"], state["redux_down.weight"]
    if up.ndim != 2 or down.ndim != 2 or down.shape[1] != up.shape[0]:
        raise CheckpointError(f"the Redux weights do not fit together (redux_up {tuple(up.shape)}, "
                              f"redux_down {tuple(down.shape)})")
    with torch.device("meta"):
        module = Redux(int(up.shape[1]), int(up.shape[0]), int(down.shape[0]))
    return _with_weights(module, state, "Redux style model")


def _with_weights(module, state: dict, what: str):
    """A module built on the meta device given the file's tensors (in the run's dtype), for inference."""
    from genloom.diffusion.models.loading import load_dtype

    dtype = load_dtype(next(iter(state.values())).dtype)
    try:
        module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"not a {what}: {str(exc).splitlines()[0][:300]}") from None
    return module.eval().requires_grad_(False)


def _style_adapter_class():
    import torch

    class LayerNorm(torch.nn.LayerNorm):
        """Normalised in float32 whatever the weights' dtype, as the adapter was trained."""

        def forward(self, x):
            return super().forward(x.float()).to(x.dtype)

    class Block(torch.nn.Module):  # a CLIP residual attention block, quick_gelu MLP
        def __init__(self, width: int, heads: int):
            super().__init__()
            self.ln_1, self.ln_2 = LayerNorm(width), LayerNorm(width)
            self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
            self.mlp = torch.nn.ModuleDict({"c_fc": torch.nn.Linear(width, 4 * width),
                                            "c_proj": torch.nn.Linear(4 * width, width)})

        def forward(self, x):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            h = self.mlp["c_fc"](self.ln_2(x))
            return x + self.mlp["c_proj"](h * torch.sigmoid(1.702 * h))

    class StyleAdapter(torch.nn.Module):
        def __init__(self, width: int, context: int, tokens: int, layers: int, heads: int):
            super().__init__()
            self.style_embedding = torch.nn.Parameter(torch.empty(1, tokens, width))
            self.ln_pre, self.ln_post = LayerNorm(width), LayerNorm(width)
            self.transformer_layes = torch.nn.Sequential(*(Block(width, heads) for _ in range(layers)))
            self.proj = torch.nn.Parameter(torch.empty(width, context))

        def forward(self, x):
            n = self.style_embedding.shape[1]
            x = torch.cat([x, self.style_embedding.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
            x = self.transformer_layes(self.ln_pre(x))
            return self.ln_post(x[:, -n:]) @ self.proj

    return StyleAdapter


def style_adapter_module(state: dict):
    """The SD1 T2I style adapter (see the module doc) with the file's weights."""
    import torch

    embedding, proj = state["style_embedding"], state.get("proj")
    layers = len({k.split(".")[1] for k in state if k.startswith("transformer_layes.")})
    if embedding.ndim != 3 or proj is None or proj.ndim != 2 or proj.shape[0] != embedding.shape[-1] or not layers:
        raise CheckpointError("not a T2I style adapter: style_embedding, proj and transformer_layes do not fit "
                              f"together (style_embedding {tuple(embedding.shape)}, proj "
                              f"{None if proj is None else tuple(proj.shape)}, {layers} layers)")
    width, tokens = int(embedding.shape[-1]), int(embedding.shape[1])
    if width % ADAPTER_HEADS:
        raise CheckpointError(f"a T2I style adapter {width} wide cannot have its {ADAPTER_HEADS} attention heads")
    with torch.device("meta"):
        module = _style_adapter_class()(width, int(proj.shape[1]), tokens, layers, ADAPTER_HEADS)
    return _with_weights(module, state, "T2I style adapter")


def load_style_model(path) -> StyleModel:
    from genloom.diffusion.models.weights import read_state_dict

    path = Path(path)
    state, _meta = read_state_dict(path)
    if "redux_down.weight" in state and "redux_up.weight" in state:
        return StyleModel(redux_module(state), "redux", path.stem, int(state["redux_up.weight"].shape[1]))
    if "style_embedding" in state:
        return StyleModel(style_adapter_module(state), "t2i_style", path.stem, int(state["style_embedding"].shape[-1]))
    raise CheckpointError(f"{path.name} is not a style model (neither Flux Redux's redux_up/redux_down "
                          "nor the T2I style adapter's style_embedding)")


def apply_style(conditioning: list, style_model: StyleModel, clip_vision_output, strength: float,
                strength_type: str) -> list:
    """StyleModelApply (see the module doc); new entries and dicts, the input is not changed."""
    import torch

    if strength_type not in STRENGTH_TYPES:
        raise ValueError(f"strength_type must be one of {STRENGTH_TYPES}, not {strength_type!r}")
    tokens = style_model.get_cond(clip_vision_output)
    tokens = tokens.reshape(1, -1, tokens.shape[-1])  # every picture's tokens in one sequence
    if strength_type == "multiply":
        tokens = tokens * float(strength)
    biased = strength_type == "attn_bias" and strength != 1.0
    bias = math.log(strength) if biased and strength > 0 else (-math.inf if biased else 0.0)
    out = []
    for entry in conditioning:
        txt, extra = entry[0], dict(entry[1])
        if txt.shape[-1] != tokens.shape[-1]:
            raise ValueError(f"the style model makes {tokens.shape[-1]}-wide tokens but the conditioning's "
                             f"are {txt.shape[-1]} wide: it belongs to another model family")
        if "attention_mask" in extra or biased:
            extra["attention_mask"] = _widened_mask(extra, txt, tokens.shape[1], bias)
            extra["attention_mask_img_shape"] = extra.get("attention_mask_img_shape", (1, 1))
        new = tokens.to(txt.dtype).expand(txt.shape[0], -1, -1)
        out.append([torch.cat([txt, new], dim=1), extra])
    return out


def _widened_mask(extra: dict, txt, n: int, bias: float):
    """The entry's joint [text, image] mask with `n` new columns/rows after the text: `bias` where
    text and image rows look at the new tokens, the old mask elsewhere."""
    import torch

    h, w = extra.get("attention_mask_img_shape", (1, 1))
    n_img, n_txt = int(h) * int(w), int(txt.shape[1])
    old = extra.get("attention_mask")
    if old is None:
        old = torch.zeros((txt.shape[0], n_txt + n_img, n_txt + n_img), dtype=torch.float16)
    elif old.dtype == torch.bool:
        old = torch.log(old.to(torch.float16))  # True -> 0, False -> -inf
    size = n_txt + n + n_img
    mask = torch.zeros((old.shape[0], size, size), dtype=torch.float16)
    keep = torch.ones(size, dtype=torch.bool)
    keep[n_txt:n_txt + n] = False
    mask[:, keep.nonzero()[:, 0][:, None], keep.nonzero()[:, 0][None, :]] = old.to(torch.float16)
    mask[:, keep, n_txt:n_txt + n] = bias
    return mask.to(txt.device)
