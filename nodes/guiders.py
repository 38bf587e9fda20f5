"""ComfyUI's DualCFGGuider and the post-CFG model patches CFGNorm and CFGZeroStar.

CFGGuider and BasicGuider live with the other custom-sampling nodes (nodes/custom_sampling.py).
The patches return a copy of the MODEL with one more post-CFG function (ModelHandle.with_post_cfg);
the input MODEL is never changed. The work is genloom.diffusion.sampling.guiders, imported inside
`run`.
"""

from genloom.engine.node import Combo, Float, Input, Node, Out

_MODEL = Input("model", "MODEL")


def _lib():
    from genloom.diffusion.sampling import guiders

    return guiders


class DualCFGGuider(Node):
    """Guides with two prompts: cond1 against cond2 (cfg_conds) and cond2 against the negative
    (cfg_cond2_negative); `nested` applies the first inside the second."""

    category = "sampling/custom_sampling/guiders"
    display_name = "Dual CFG Guider"
    inputs = [_MODEL, Input("cond1", "CONDITIONING"), Input("cond2", "CONDITIONING"),
              Input("negative", "CONDITIONING"),
              Float("cfg_conds", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Float("cfg_cond2_negative", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Combo("style", ["regular", "nested"])]
    outputs = [Out("GUIDER")]

    def run(self, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        lib = _lib()
        return (lib.DualCFGGuider(model, cond1, negative, float(cfg_conds), middle=lib.as_negative_prompt(cond2),
                                  cfg2=float(cfg_cond2_negative), nested=style == "nested"),)


class CFGNorm(Node):
    """Caps the guided prediction's per-position norm at the conditional prediction's, times strength."""

    category = "advanced/guidance"
    display_name = "CFGNorm"
    inputs = [_MODEL, Float("strength", 1.0, min=0.0, max=100.0, step=0.01)]
    outputs = [Out("MODEL", "patched_model")]

    def run(self, model, strength):
        return (model.with_post_cfg(_lib().CFGNorm(float(strength))),)


class CFGZeroStar(Node):
    """CFG-Zero*: rescales the unconditional prediction by its optimal projection onto the conditional."""

    category = "advanced/guidance"
    display_name = "CFGZeroStar"
    inputs = [_MODEL]
    outputs = [Out("MODEL", "patched_model")]

    def run(self, model):
        return (model.with_post_cfg(_lib().CFGZeroStar()),)


NODES = [DualCFGGuider, CFGNorm, CFGZeroStar]
