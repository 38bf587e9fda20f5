"""ComfyUI's UNet block patches on a diffusers UNet2DConditionModel.

A pack registers functions in MODEL.model_options["transformer_options"]["patches"]:
  "input_block_patch"             fn(h, transformer_options) -> h, on the output of an input block,
                                  before it is kept as the skip connection
  "input_block_patch_after_skip"  fn(h, transformer_options) -> h, on what goes on to the next block
                                  after the skip was kept (the skip itself is unchanged)
  "output_block_patch"            fn(h, hsp, transformer_options) -> (h, hsp), at every output block:
                                  the hidden state coming up and the skip, before they are joined
transformer_options["block"] is ("input", i) or ("output", i) in ComfyUI's LDM numbering, which
counts every member of the original UNet's input_blocks/output_blocks lists:

  input 0                 conv_in
  input 1, 2, ...         each resnet (+ its transformer) of down block 0, then its downsampler,
                          then down block 1's, ... (a down block without downsampler has none)
  output 0, 1, ...        each resnet (+ transformer) of up block 0, its upsampler belonging to the
                          last one, then up block 1's, ...

A diffusers UNet has no such loop to patch, so `block_patched` installs forward hooks at the same
points for the duration of a `use()`:
- input patch k: a forward hook on the module whose output becomes skip k (conv_in, the member's
  transformer or resnet, the downsampler): it changes the skip and what continues alike;
- after-skip patch k: a pre-forward hook on the module consuming h next (the next resnet or
  downsampler of the block, the next down block, the mid block), so the kept skip stays as it was;
- output patch j: for the first member of an up block, a pre-forward hook on the up block, which
  receives h and the skips; for member r > 0, a forward hook on member r - 1 (which makes the h that
  is joined next) plus, where the patch also changed the skip, a pre-forward hook on resnet r that
  puts the changed skip into the joined input.
Where input patches are installed (they may change spatial sizes: Kohya deep shrink), an up block's
upsampler is told the size of the next skip, as ComfyUI's output blocks are (`output_shape`),
instead of doubling (the same numbers where the sizes are regular).
The per-call transformer options (cond_or_uncond, sigmas, ...) come from attention.call_options.
"""

from __future__ import annotations

from contextlib import contextmanager

INPUT = "input_block_patch"
AFTER_SKIP = "input_block_patch_after_skip"
OUTPUT = "output_block_patch"
NAMES = (INPUT, AFTER_SKIP, OUTPUT)


def block_patches(model_options: dict) -> dict:
    """{patch name: [fn, ...]} of the block patches in `model_options` (only those present)."""
    patches = ((model_options or {}).get("transformer_options") or {}).get("patches") or {}
    return {name: list(patches[name]) for name in NAMES if patches.get(name)}


def _members(block) -> list:
    """The module whose output is each member's h, in order (transformer, else resnet)."""
    resnets = list(getattr(block, "resnets", []) or [])
    attentions = list(getattr(block, "attentions", []) or [])
    return [attentions[i] if i < len(attentions) else r for i, r in enumerate(resnets)]


def input_places(unet) -> list:
    """[(LDM input index, producing module, next consumer or None)] in forward order."""
    places = [[unet.conv_in, None]]  # [producer, consumer]; the consumer is set by what follows
    for block in unet.down_blocks:
        places[-1][1] = block
        resnets = list(block.resnets)
        for m, out in enumerate(_members(block)):
            if m > 0:
                places[-1][1] = resnets[m]
            places.append([out, None])
        downsamplers = list(getattr(block, "downsamplers", None) or [])
        if downsamplers:
            places[-1][1] = downsamplers[0]
            places.append([downsamplers[0], None])
    places[-1][1] = getattr(unet, "mid_block", None)
    return [(i, producer, consumer) for i, (producer, consumer) in enumerate(places)]


def output_places(unet) -> list:
    """[(up block, [LDM output index of each member])]."""
    out, j = [], 0
    for block in unet.up_blocks:
        n = len(block.resnets)
        out.append((block, list(range(j, j + n))))
        j += n
    return out


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def _set_arg(args, kwargs, index: int, name: str, value):
    if len(args) > index:
        args = (*args[:index], value, *args[index + 1:])
    else:
        kwargs = {**kwargs, name: value}
    return args, kwargs


@contextmanager
def block_patched(unet, model_options: dict):
    """While inside, the block patches of `model_options` run at their places in `unet`."""
    fns = block_patches(model_options)
    if not fns or not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        yield unet
        return
    from .attention import _CALL

    static = (model_options or {}).get("transformer_options") or {}

    def options(block):
        return {**(_CALL.get() or static), "block": block}

    def run_h(name, h, block):
        for fn in fns.get(name, ()):
            h = fn(h, options(block))
        return h

    resizing = INPUT in fns or AFTER_SKIP in fns  # input patches may change the sizes that follow
    handles = _input_hooks(unet, fns, run_h) if resizing else []
    skips: list = []  # spatial sizes of the skips of the current call, in order
    handles += _output_hooks(unet, fns.get(OUTPUT, []), options, skips, resize=resizing)
    try:
        yield unet
    finally:
        for handle in handles:
            handle.remove()


def _input_hooks(unet, fns, run_h) -> list:
    handles = []
    for k, producer, consumer in input_places(unet):
        if INPUT in fns:
            def after(_m, _args, output, k=k):
                return _with_first(output, run_h(INPUT, _first(output), ("input", k)))
            handles.append(producer.register_forward_hook(after))
        if AFTER_SKIP in fns and consumer is not None:
            def before(_m, args, kwargs, k=k):
                h = _arg(args, kwargs, 0, "hidden_states")
                return _set_arg(args, kwargs, 0, "hidden_states", run_h(AFTER_SKIP, h, ("input", k)))
            handles.append(consumer.register_forward_pre_hook(before, with_kwargs=True))
    return handles


def _output_hooks(unet, fns: list, options, skips: list, resize: bool) -> list:
    """Output-block patches, and (`resize`) upsamplers aimed at the next skip's size."""
    import torch

    handles = []
    if resize:
        def start(_m, _args, output):
            skips[:] = [tuple(output.shape[-2:])]

        def record(_m, _args, output):
            skips.extend(tuple(s.shape[-2:]) for s in output[1])
        handles.append(unet.conv_in.register_forward_hook(start))
        handles += [block.register_forward_hook(record) for block in unet.down_blocks]
    if not fns and not resize:
        return handles
    places = output_places(unet)
    consumed, total = [], 0  # how many skips are used up after each up block
    for block, _idx in places:
        total += len(block.resnets)
        consumed.append(total)

    def patch(h, hsp, j):
        for fn in fns:
            h, hsp = fn(h, hsp, options(("output", j)))
        return h, hsp

    for u, (block, idx) in enumerate(places):
        state: dict = {}  # this call's skips for the block, and changed skips per member

        def enter(_m, args, kwargs, block=block, idx=idx, state=state, u=u):
            h = _arg(args, kwargs, 0, "hidden_states")
            res = tuple(_arg(args, kwargs, 1, "res_hidden_states_tuple"))
            if fns:
                h, hsp = patch(h, res[-1], idx[0])
                res = (*res[:-1], hsp)
            state.clear()
            state["res"] = res
            args, kwargs = _set_arg(args, kwargs, 0, "hidden_states", h)
            args, kwargs = _set_arg(args, kwargs, 1, "res_hidden_states_tuple", res)
            upsampling = getattr(block, "upsamplers", None) and len(skips) > consumed[u]
            if resize and upsampling and len(args) <= 3:  # upsample_size comes after temb
                kwargs = {**kwargs, "upsample_size": skips[len(skips) - consumed[u] - 1]}
            return args, kwargs
        handles.append(block.register_forward_pre_hook(enter, with_kwargs=True))
        if not fns:
            continue
        outs, resnets = _members(block), list(block.resnets)
        for r in range(1, len(resnets)):
            def made(_m, _args, output, r=r, idx=idx, state=state):
                res = state["res"]
                hsp = res[-(r + 1)]
                h, new = patch(_first(output), hsp, idx[r])
                if new is not hsp:
                    state[r] = (h.shape[1], new)
                return _with_first(output, h)

            def join(_m, args, kwargs, r=r, state=state):
                changed = state.pop(r, None)
                if changed is None:
                    return None
                x = _arg(args, kwargs, 0, "input_tensor")
                joined = torch.cat([x[:, :changed[0]], changed[1]], dim=1)
                return _set_arg(args, kwargs, 0, "input_tensor", joined)
            handles.append(outs[r - 1].register_forward_hook(made))
            handles.append(resnets[r].register_forward_pre_hook(join, with_kwargs=True))
    return handles
