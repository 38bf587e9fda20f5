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
             on_token: Callable[[int, int], None] | None = None) -> list[int]:
    """New token ids after `input_ids` [1, T] until an end-of-sequence id or `max_new_tokens`.

    `on_token(done, total)` is called after every token: progress, and the place an interrupt raises."""
    import torch

    device = next(model.parameters()).device
    ids = input_ids.to(device)
    # transformers renamed the key/value cache argument (past_key_values -> cache); take either.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    generator = None
    if sampling is not None:
        generator = torch.Generator(device=device).manual_seed(int(sampling.seed) % (2 ** 63))
    out: list[int] = []
    past, step_input = None, ids
    with torch.no_grad():
        for i in range(max_new_tokens):
            result = model(input_ids=step_input, use_cache=True, **{cache_name: past})
            past = getattr(result, cache_name)
            token = next_token(result.logits[:, -1, :], ids, sampling, generator)
            ids = torch.cat([ids, token[:, None]], dim=-1)
            step_input = token[:, None]
            value = int(token[0])
            if on_token is not None:
                on_token(i + 1, max_new_tokens)
            if value in eos_ids:
                break
            out.append(value)
    return out


def write(model, tokenizer, text: str, *, max_new_tokens: int, sampling: Sampling | None = None,
          templated: bool = True, on_token: Callable[[int, int], None] | None = None) -> str:
    """The text the model writes after `text` (already in its chat template when `templated`), on the
    engine's device through the memory manager."""
    import torch

    from genloom.diffusion.models.owner import model_owner

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not templated).input_ids
    with torch.no_grad(), model_owner().memory.use(model) as live:
        new = generate(live, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                       eos_ids=eos_token_ids(live, tokenizer), on_token=on_token)
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
