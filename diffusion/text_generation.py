"""Text generation with the language models genloom loads as text encoders (TextGenerate).

One token at a time over the model's key/value cache, so every token is a progress step and an
interrupt lands between two tokens. Greedy decoding picks the arg-max, which is what transformers'
`generate(do_sample=False)` does; sampling applies, in order, the repetition penalty (a seen token's
positive logit divided by it, a negative one multiplied), the presence penalty (subtracted once from
every seen token's logit), the temperature, then top-k, top-p and min-p filtering, and draws from a generator seeded once per run, so one seed gives one text.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_k: int = 64
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.05
    seed: int = 0
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already present


def chat_prompt(tokenizer, prompt: str, system: str | None = None, thinking: bool = False) -> str:
    """The model's own chat template when its tokenizer has one, with thinking on or off."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
    return "\n".join(m["content"] for m in messages)


VIDEO_FPS, SAMPLED_FPS = 24, 1  # ComfyUI's TextGenerate: `video` frames are taken as 24 fps, read at 1 fps
VIDEO_TOKENS = "<|vision_start|><|video_pad|><|vision_end|>"


def sample_video(video):
    """The frames TextGenerate reads of a `video` IMAGE batch [F, H, W, C]: one a second of its assumed
    24 fps (frames 0, 24, 48, ...), as ComfyUI samples it; a clip under a second keeps its first frame."""
    return video[::VIDEO_FPS // SAMPLED_FPS]


def place_pictures(text: str, count: int, templated: bool, videos: int = 0) -> str:
    """`text` with a Qwen2.5-VL vision block (`<|vision_start|><|image_pad|><|vision_end|>`) per picture
    and a video block (`...<|video_pad|>...`) per video, where ComfyUI puts them: templated, all at the start
    of the user's words, pictures first; a raw prompt keeps the placeholders it has and gets the missing
    ones after its first vision block (videos: after its last one), else after its `<|im_start|>user\n`,
    else at its start. More placeholders than pictures (or videos) is an error."""
    from genloom.diffusion.models.qwen_edit import VISION_TOKENS

    if templated:
        return VISION_TOKENS * count + VIDEO_TOKENS * videos + text
    for block, pad, given, what in ((VISION_TOKENS, "<|image_pad|>", count, "picture"),
                                    (VIDEO_TOKENS, "<|video_pad|>", videos, "video")):
        have = text.count(pad)
        if not given:  # nothing of this kind: its placeholders stay plain tokens
            continue
        if have > given:
            raise ValueError(f"the prompt has {have} {pad} placeholders for {given} {what}(s)")
        if block == VIDEO_TOKENS:  # after the last vision block, so a video follows the pictures
            text = _insert(text, block * (given - have), (VIDEO_TOKENS, VISION_TOKENS, "<|im_start|>user\n"), True)
        else:
            text = _insert(text, block * (given - have), (VISION_TOKENS, "<|im_start|>user\n"), False)
    return text


def _insert(text: str, missing: str, marks: tuple, last: bool) -> str:
    """`missing` after the first of `marks` that `text` holds (its last occurrence when `last`), else at
    its start."""
    for mark in marks:
        if missing and mark in text:
            at = (text.rindex(mark) if last else text.index(mark)) + len(mark)
            return text[:at] + missing + text[at:]
    return missing + text


def split_thinking(text: str) -> tuple[str, str]:
    """(thinking, answer): what a reasoning model wrote between <think> and </think>, and after it."""
    if THINK_CLOSE not in text:
        return "", text.strip()
    head, _, answer = text.partition(THINK_CLOSE)
    return head.replace(THINK_OPEN, "").strip(), answer.strip()


def _filter(logits, s: Sampling):
    import torch

    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        ordered, index = torch.sort(probs, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ranked above each one
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, index, before >= s.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
    if s.min_p > 0.0:
        floor = probs.max(dim=-1, keepdim=True).values * s.min_p
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def next_token(logits, seen, sampling: Sampling | None, generator):
    """The next token id [B] from the last position's logits [B, V]; `seen` holds the ids so far."""
    import torch

    logits = logits.float()
    if sampling is None:
        return logits.argmax(dim=-1)
    if sampling.repetition_penalty != 1.0:
        picked = logits.gather(-1, seen)
        picked = torch.where(picked > 0, picked / sampling.repetition_penalty,
                             picked * sampling.repetition_penalty)
        logits = logits.scatter(-1, seen, picked)
    if sampling.presence_penalty:
        present = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, seen, True)
        logits = logits - present.float() * sampling.presence_penalty
    logits = _filter(logits / sampling.temperature, sampling)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model, input_ids, *, max_new_tokens: int, eos_ids: set[int], sampling: Sampling | None = None,
             on_token: Callable[[int, int], None] | None = None, inputs_embeds=None, position_ids=None) -> list[int]:
    """New token ids after `input_ids` [1, T] until an end-of-sequence id or `max_new_tokens`.

    `inputs_embeds` [1, T, D] and `position_ids` [3, 1, T] (a picture's vision tokens in place, Qwen2.5-VL's
    3-D rotary positions) replace the prompt's own for the first pass; each new token then sits one past
    the largest position, as transformers' rope deltas place it. `on_token(done, total)` is called after
    every token: progress, and the place an interrupt raises."""
    import torch

    device = next(model.parameters()).device
    ids = input_ids.to(device)
    # transformers renamed the key/value cache argument (past_key_values -> cache); take either.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    generator = None
    if sampling is not None:
        generator = torch.Generator(device=device).manual_seed(int(sampling.seed) % (2 ** 63))
    out: list[int] = []
    past = None
    step = {"input_ids": ids} if inputs_embeds is None else \
        {"inputs_embeds": inputs_embeds, "position_ids": position_ids}
    after = None if position_ids is None else int(position_ids.max()) + 1
    with torch.no_grad():
        for i in range(max_new_tokens):
            result = model(use_cache=True, **step, **{cache_name: past})
            past = getattr(result, cache_name)
            token = next_token(result.logits[:, -1, :], ids, sampling, generator)
            ids = torch.cat([ids, token[:, None]], dim=-1)
            step = {"input_ids": token[:, None]}
            if after is not None:
                step["position_ids"] = torch.full((3, 1, 1), after + i, device=device)
            value = int(token[0])
            if on_token is not None:
                on_token(i + 1, max_new_tokens)
            if value in eos_ids:
                break
            out.append(value)
    return out


def write(model, tokenizer, text: str, *, max_new_tokens: int, sampling: Sampling | None = None,
          templated: bool = True, on_token: Callable[[int, int], None] | None = None, images=(), videos=()) -> str:
    """The text the model writes after `text` (already in its chat template when `templated`), on the
    engine's device through the memory manager. `images` (IMAGE tensors) fill the `<|image_pad|>` tokens
    of `text` in order, `videos` (IMAGE frames, already sampled at SAMPLED_FPS) its `<|video_pad|>` tokens,
    through a Qwen2.5-VL model's vision tower (genloom.diffusion.models.qwen_edit)."""
    import torch

    from genloom.diffusion.models.owner import model_owner

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not templated).input_ids
    with torch.no_grad(), model_owner().memory.use(model) as live:
        vision = {}
        if images or videos:
            from genloom.diffusion.models.qwen_edit import vision_inputs

            pad, video_pad = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])
            ids, vision["inputs_embeds"], vision["position_ids"] = vision_inputs(
                live.model, ids[0].tolist(), list(images), pad, list(videos), video_pad, video_fps=SAMPLED_FPS)
        new = generate(live, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                       eos_ids=eos_token_ids(live, tokenizer), on_token=on_token, **vision)
    return tokenizer.decode(new, skip_special_tokens=True)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Where generation stops: the model's generation config and the tokenizer's end tokens."""
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    for name in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
        idx = tokenizer.convert_tokens_to_ids(name) if hasattr(tokenizer, "convert_tokens_to_ids") else None
        if isinstance(idx, int) and idx != getattr(tokenizer, "unk_token_id", None) and idx >= 0:
            found.add(idx)
    return found
