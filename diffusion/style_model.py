"""Style models (ComfyUI's STYLE_MODEL): image tokens appended to a text conditioning.

Files in the `style_models` folder are told apart by their keys:
  Flux Redux   `redux_up.{weight,bias}` [3 * D, C] and `redux_down.{weight,bias}` [D, 3 * D]
               (flux1-redux-dev: C = 1152, SigLIP So400m's width; D = 4096, T5-XXL's): each of the
               vision tower's last_hidden_state tokens becomes redux_down(silu(redux_up(token))).
Other layouts (the SD1 T2I style adapter's `style_embedding`) are refused by name.

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


@dataclass(frozen=True, eq=False)
class StyleModel:
    module: Any  # tokens [B, T, C] -> [B, N, D]
    kind: str = "redux"
    name: str = ""

    def get_cond(self, clip_vision_output):
        """The picture tokens for a CLIP_VISION_OUTPUT (from its last_hidden_state)."""
        import torch

        from genloom.diffusion.models.owner import model_owner

        hidden = clip_vision_output["last_hidden_state"]
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

    from genloom.diffusion.models.loading import load_dtype

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
    dtype = load_dtype(up.dtype)
    try:
        module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"not a Redux style model: {str(exc).splitlines()[0][:300]}") from None
    return module.eval().requires_grad_(False)


def load_style_model(path) -> StyleModel:
    from genloom.diffusion.models.weights import read_state_dict

    path = Path(path)
    state, _meta = read_state_dict(path)
    if "redux_down.weight" in state and "redux_up.weight" in state:
        return StyleModel(redux_module(state), "redux", path.stem)
    if "style_embedding" in state:
        raise CheckpointError(f"{path.name} is a T2I-Adapter style model (SD1): not supported yet; "
                              "Flux Redux style models are")
    raise CheckpointError(f"{path.name} is not a style model (no redux_up/redux_down weights)")


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
