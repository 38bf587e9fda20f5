"""CLIP and VAE as ComfyUI's node packs call them, over genloom's frozen handles.

CLIP: tokenize(text) -> tokens per encoder (ComfyUI's keys: "l", "g", "h", "t5xxl"; windows of
(token, weight) pairs with start, end and padding tokens; the LLM encoders' keys and windows:
comfy_tokens_llm.py), encode_from_tokens(tokens,
return_pooled, return_dict) - of those tokens as they were made, or as a pack built or edited them -,
encode_from_tokens_scheduled, clone() -> a mutable `ClipPatcher` (clip_layer, add_patches, load_sd
on the clone), get_key_patches.
VAE: encode / decode (pixels [B,H,W,C] 0..1), encode_tiled / decode_tiled, spacial_compression_*,
downscale_ratio / upscale_ratio, latent_channels, first_stage_model, vae_encode_crop_pixels.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import replace

from .patcher import text_param_names

# ComfyUI's token keys per encoder: SD1 "l", SD2 "h", SDXL "l" + "g"; split encoders by role.
_ROLE_KEYS = {"clip_l": "l", "clip_g": "g", "t5xxl": "t5xxl"}  # the LLMs' keys: comfy_tokens_llm.key
_POSITIONAL_KEYS = {"sd1": ("l",), "sd2": ("h",), "sdxl": ("l", "g"), "sdxl_refiner": ("g",)}
# ComfyUI's state-dict names of the text encoders (under cond_stage_model), by token key.
_SD_NAMES = {"l": "clip_l", "g": "clip_g", "h": "clip_h", "t5xxl": "t5xxl"}
# Present in CLIP-G's state dict only (CLIP-L has 12 layers): ComfyUI's SDXL load_sd routes by it.
_CLIP_G_KEY = "text_model.encoder.layers.30.mlp.fc1.weight"

# What load_sd returns, as torch's load_state_dict(strict=False) names it.
IncompatibleKeys = namedtuple("IncompatibleKeys", "missing_keys unexpected_keys")


class Tokens(dict):
    """{key: windows}: remembers the text each key was tokenized from, so encoding goes through
    genloom's prompt encoding (weights, embeddings, long prompts) with the same numbers."""

    def __init__(self, windows: dict, texts: dict):
        super().__init__(windows)
        self.texts = texts
        self._made = {k: [list(w) for w in v] for k, v in windows.items()}

    def edited(self) -> bool:
        def same(a, b):
            return a is b or (type(a) is type(b) and not hasattr(a, "shape") and a == b)

        for key, windows in self.items():
            made = self._made.get(key)
            if made is None or len(made) != len(windows):
                return True
            for w, m in zip(windows, made):
                if len(w) != len(m) or any(not (same(a[0], b[0]) and a[1] == b[1]) for a, b in zip(w, m)):
                    return True
        return False


def _keys(clip) -> tuple:
    from .comfy_tokens_llm import is_llm, key

    if is_llm(clip):
        return (key(clip),)
    if clip.roles:
        return tuple(_ROLE_KEYS.get(r, r) for r in clip.roles)
    return _POSITIONAL_KEYS.get(clip.kind, ("l",) * len(clip.text_encoders))


def _prefixes(clip) -> dict:
    """{"clip_l.transformer.": (encoder index, LoRA target), ...} for this CLIP's encoders."""
    out = {}
    for index, key in enumerate(_keys(clip)):
        target = clip.roles[index] if clip.roles else ("text_encoder" if index == 0 else "text_encoder_2")
        out[f"{_SD_NAMES.get(key, key)}.transformer."] = (index, target)
    return out


def _window(window: list, pad: int, width: int) -> list:
    """A token window as genloom encodes it: (token id or embedding vector, weight) pairs (a pack's
    third element, ComfyUI's word id, dropped), padded to the encoder's window."""
    out = []
    for entry in window:
        token, weight = entry[0], float(entry[1]) if len(entry) > 1 else 1.0
        out.append((token if getattr(token, "ndim", 0) >= 1 else int(token), weight))
    if len(out) > width:
        raise ValueError(f"a token window holds {len(out)} tokens; this text encoder takes {width}")
    return out + [(pad, 1.0)] * (width - len(out))


def _no_windows(key: str, keys: tuple) -> ValueError:
    return ValueError(f"the tokens have no {key!r} windows (this CLIP takes {', '.join(keys)})")


def encode_windows(clip, tokens: dict):
    """(cond, pooled) of ComfyUI token windows a pack built or edited ({"l": [[(id, weight), ...],
    ...], "g": ...}): genloom's prompt encoding of those same windows (encoding.py: weights against
    the empty prompt's window; SDXL's penultimate layer; SD3's and Flux's joins of their encoders)."""
    from .comfy_tokens_llm import encode as encode_llm, is_llm
    from .embeddings import EmbeddingLookup
    from .encoding import WINDOW_ENCODERS, _specials, encode_windows as encode, prompt_windows

    keys = _keys(clip)
    if clip.kind in WINDOW_ENCODERS and clip.family_encode is None:
        return _encode_split(clip, tokens, WINDOW_ENCODERS[clip.kind])
    if is_llm(clip):  # Qwen-Image, Z-Image, Flux.2, Wan: one encoder, one key
        if keys[0] not in tokens:
            raise _no_windows(keys[0], keys)
        return encode_llm(clip, keys[0], tokens[keys[0]])
    if clip.roles or clip.family_encode is not None:
        raise NotImplementedError(f"genloom encodes {clip.kind} tokens as clip.tokenize(text) made them; "
                                  "tokens built or edited by hand are not supported for it")
    lookup = EmbeddingLookup()
    lists = []
    for key, tok, enc in zip(keys, clip.tokenizers, clip.text_encoders):
        if not tokens.get(key):
            raise _no_windows(key, keys)
        width = len(prompt_windows(tok, enc, "", lookup)[0])
        lists.append([_window(w, _specials(tok)[2], width) for w in tokens[key]])
    return encode(clip, lists, lookup)


def _encode_split(clip, tokens: dict, encode):
    """SD3 / Flux: each encoder's windows (CLIP's padded to 77, T5's to the longest of them; []: no
    tokens, as ComfyUI takes an empty list) through the family's window encoding. Windows under the
    key of an encoder the CLIP lacks count only as given or not (SD3's zeros for that encoder)."""
    from .embeddings import EmbeddingLookup
    from .encoding import _specials, prompt_windows

    lookup = EmbeddingLookup()
    keys = _keys(clip)
    windows = {role: [] if tokens.get(key) else None for role, key in _ROLE_KEYS.items()}
    for role, key, tok, enc in zip(clip.roles, keys, clip.tokenizers, clip.text_encoders):
        if key not in tokens:
            raise _no_windows(key, keys)
        given = tokens[key]
        if role == "t5xxl":
            width = max((len(w) for w in given), default=0)
        else:
            width = len(prompt_windows(tok, enc, "", lookup)[0])
        windows[role] = [_window(w, _specials(tok)[2], width) for w in given] or None
    return encode(clip, windows, lookup)


class ComfyClipMethods:
    """Mixed into ClipHandle and ClipPatcher (which provide the handle's fields)."""

    @property
    def handle(self):
        return self

    def clone(self) -> "ClipPatcher":
        return ClipPatcher(self.handle)

    @property
    def layer_idx(self):
        return None if self.stop_at_layer == -1 else self.stop_at_layer

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def cond_stage_model(self):
        return self.text_encoders[0]

    def tokenize(self, text: str, return_word_ids: bool = False, llama_template: str | None = None,
                 **kwargs) -> Tokens | dict:
        """ComfyUI's tokens of `text`; with a pack's `llama_template` (the LLM encoders) a plain dict,
        which encode_from_tokens reads as windows (genloom's own encoding uses the default template)."""
        from .comfy_tokens_llm import is_llm, window
        from .embeddings import EmbeddingLookup
        from .encoding import WINDOW_ENCODERS, prompt_windows, split_windows

        lookup = EmbeddingLookup()
        keys = _keys(self)
        if is_llm(self):
            windows = {keys[0]: [window(self, text, llama_template)]}
            if llama_template is not None:
                return windows
        elif self.kind in WINDOW_ENCODERS and self.family_encode is None:  # SD3, Flux: T5's padded sequence
            made = split_windows(self, {role: text for role in self.roles}, lookup)
            windows = {key: made[role] for key, role in zip(keys, self.roles)}
        else:
            windows = {key: prompt_windows(tok, enc, text, lookup, "clip_g" if key == "g" else "clip_l")
                       for key, tok, enc in zip(keys, self.tokenizers, self.text_encoders)}
        return Tokens(windows, {key: text for key in keys})

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        handle = self.handle
        if not isinstance(tokens, Tokens) or tokens.edited():
            cond, pooled = encode_windows(handle, tokens)
        elif handle.roles:
            texts = tokens.texts
            cond, pooled = handle.encode_roles({role: texts.get(key) for role, key in zip(handle.roles, _keys(handle))})
        else:
            keys, texts = _keys(handle), tokens.texts
            cond, pooled = handle.encode(texts[keys[0]], texts[keys[-1]] if len(keys) > 1 else None)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        return [[cond, {**out, **(add_dict or {})}]]

    def get_key_patches(self) -> dict:
        out = {}
        names = {0: "clip_h" if self.kind == "sd2" else "clip_l", 1: "clip_g"}
        for i, enc in enumerate(self.text_encoders):
            params = dict(enc.named_parameters())
            for key, name in text_param_names(enc).items():
                if key.startswith(("text_model.", "text_projection")):
                    out[f"{names[i]}.transformer.{key}"] = [(params[name].data,)]
        return out

    def _mutable(self):
        raise TypeError("this CLIP is shared by every node that receives it: call clip.clone() and "
                        "change the clone")

    def clip_layer(self, layer_idx: int) -> None:
        self._mutable().stop_at_layer = int(layer_idx)

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        return self._mutable().add_patches(patches, strength_patch, strength_model)

    def load_sd(self, sd: dict, full_model: bool = False):
        return self._mutable().load_sd(sd, full_model)


class ClipPatcher(ComfyClipMethods):
    """A CLIP clone a pack changes in place; reads go to the handle it stands for (`handle`)."""

    def __init__(self, handle):
        self._handle = handle.handle if isinstance(handle, ClipPatcher) else handle

    @property
    def handle(self):
        return self._handle

    def __getattr__(self, name):
        if name.startswith("__") or name == "_handle":
            raise AttributeError(name)
        return getattr(self._handle, name)

    def clone(self) -> "ClipPatcher":
        return ClipPatcher(self._handle)

    def _mutable(self):
        return self

    def clip_layer(self, layer_idx: int) -> None:
        self._handle = self._handle.with_stop_at_layer(layer_idx)

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Weight patches by ComfyUI's keys ("clip_l.transformer.text_model...", "clip_g...")."""
        known = []
        for index, target, table in self._per_encoder(patches)[0]:
            found = self._patch(index, target, {name: value for name, (_key, value) in table.items()},
                                strength_patch, strength_model)
            known += [table[name][0] for name in found]
        return known

    def load_sd(self, sd: dict, full_model: bool = False):
        """Load text-encoder weights as ComfyUI's CLIP.load_sd does: `full_model` keys name the
        encoder ("clip_l.transformer.text_model..."); otherwise the state dict is one encoder's
        (transformers' names), CLIP-G's on SDXL when it has CLIP-G's 31st layer, else the first. The
        weights become this clone's ("set" patches: the shared encoders never change). Returns
        (missing_keys, unexpected_keys) as torch's load_state_dict(strict=False) does."""
        if full_model:
            groups, unexpected = self._per_encoder(sd)
            given = {index: table for index, _target, table in groups}
            missing = []
            for prefix, (index, target) in _prefixes(self._handle).items():
                table = given.get(index, {})
                gone, wrong = self._load(index, target, {name: value for name, (_k, value) in table.items()})
                missing += [prefix + name for name in gone]
                unexpected += [table[name][0] for name in wrong]
            return IncompatibleKeys(missing, unexpected)
        keys = _keys(self._handle)
        index = keys.index("g") if "g" in keys and len(keys) > 1 and _CLIP_G_KEY in sd else 0
        target = _prefixes(self._handle)[f"{_SD_NAMES.get(keys[index], keys[index])}.transformer."][1]
        return IncompatibleKeys(*self._load(index, target, dict(sd)))

    def _per_encoder(self, weights: dict) -> tuple:
        """([(encoder index, target, {name: (key as given, value)})], keys of no encoder)."""
        tables: dict = {}
        rest = []
        prefixes = _prefixes(self._handle)
        for key, value in weights.items():
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is None:
                rest.append(key)
                continue
            tables.setdefault(prefixes[prefix], {})[key[len(prefix):]] = (key, value)
        return [(index, target, table) for (index, target), table in tables.items()], rest

    def _patch(self, index: int, target: str, table: dict, strength_patch=1.0, strength_model=1.0) -> list:
        from .patcher import KeyPatches

        kp = KeyPatches(table, float(strength_patch), float(strength_model), target=target)
        found = kp.keys_in(self._handle.text_encoders[index])
        if found:
            self._handle = replace(self._handle, patches=self._handle.patches + ((kp, 1.0),))
        return found

    def _load(self, index: int, target: str, sd: dict) -> tuple:
        """(missing, unexpected) of loading `sd` into encoder `index` as "set" patches."""
        encoder = self._handle.text_encoders[index]
        names = text_param_names(encoder)
        params = dict(encoder.named_parameters())
        for key, value in sd.items():
            name = names.get(key)
            if name is not None and tuple(value.shape) != tuple(params[name].shape):
                raise RuntimeError(f"size mismatch for {key}: the checkpoint has {tuple(value.shape)}, "
                                   f"this text encoder {tuple(params[name].shape)}")
        found = set(self._patch(index, target, {k: ("set", (v,)) for k, v in sd.items() if k in names}))
        covered = {names[k] for k in found}
        clip = "CLIP" in type(encoder).__name__  # ComfyUI spells CLIP's weights "text_model.*"

        def spelled(name):
            return name if not clip or name.startswith(("text_model.", "text_projection")) else "text_model." + name
        return [spelled(n) for n in params if n not in covered], [k for k in sd if k not in found]


class ComfyVaeMethods:
    """Mixed into VaeHandle: ComfyUI's VAE surface."""

    @property
    def first_stage_model(self):
        return self.vae

    @property
    def downscale_ratio(self) -> int:
        return self.scale_factor

    @property
    def upscale_ratio(self) -> int:
        return self.scale_factor

    def spacial_compression_decode(self) -> int:
        return self.scale_factor

    def spacial_compression_encode(self) -> int:
        return self.scale_factor

    @property
    def latent_dim(self) -> int:
        return 2

    @property
    def output_device(self):
        import torch

        return torch.device("cpu")

    @property
    def vae_dtype(self):
        return next(self.vae.parameters()).dtype

    def vae_encode_crop_pixels(self, pixels):
        from genloom.diffusion.vae_passes import crop_to_multiple

        return crop_to_multiple(pixels, self.scale_factor)

    def decode_tiled(self, samples, tile_x=64, tile_y=64, overlap=16, tile_t=None, overlap_t=None):
        """Tiles in latent cells, as ComfyUI's; square tiles of tile_x."""
        from genloom.diffusion.vae_passes import decode_tiled

        f = self.scale_factor
        return decode_tiled(self, samples, int(tile_x) * f, int(overlap) * f)

    def encode_tiled(self, pixels, tile_x=512, tile_y=512, overlap=64, tile_t=None, overlap_t=None):
        """genloom encodes in one pass (ComfyUI blends tiles: its numbers differ at the seams)."""
        return self.encode(pixels[..., :3])

    def memory_used_encode(self, shape, dtype) -> int:
        return 0

    def memory_used_decode(self, shape, dtype) -> int:
        return 0
