"""TextGenerate on a tiny random Qwen3 language model: greedy output equals transformers' `generate`,
sampled output equals `generate(do_sample=True)` under the same seed (same filters, same draws), every
token is a progress event, and an interrupt lands between two tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from genloom.diffusion import text_generation as lib  # noqa: E402
from genloom.diffusion.models.handles import ClipHandle  # noqa: E402
from genloom.engine import context  # noqa: E402
from genloom.engine.errors import Interrupted, NodeInputError  # noqa: E402
from genloom.nodes.text_generation import TextGenerate  # noqa: E402

SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
WORDS = ("user assistant system a red circle blue square left of right the cat sits on mat big small "
         "green yellow three stars picture of with and , . ! ?").split()
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


@pytest.fixture(scope="module")
def llm():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[2:]})
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=512, tie_word_embeddings=True,
                                   eos_token_id=vocab["<|im_end|>"])
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    return ClipHandle(tokenizers=(tok,), text_encoders=(model,), kind="qwen3"), model, tok


@pytest.fixture
def ctx():
    events = []
    c = context.RunContext(device_choice="cpu", emit=lambda e, d: events.append((e, d)))
    token = context.use(c)
    c.events = events
    yield c
    context.reset(token)


def _reference(model, tok, prompt, thinking=False, **gen):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=thinking)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, eos_token_id=tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]),
                         pad_token_id=tok.pad_token_id, **gen)
    new = out[0, ids.shape[1]:].tolist()
    return tok.decode(new, skip_special_tokens=True), new


def test_greedy_equals_transformers_generate(llm, ctx):
    clip, model, tok = llm
    (text,) = TextGenerate().run(clip, "a red circle left of a blue square", 24, "off")
    expected, new = _reference(model, tok, "a red circle left of a blue square", max_new_tokens=24, do_sample=False)
    assert text == expected and len(new) > 0
    progress = [d["value"] for e, d in ctx.events if e == "progress"]
    assert progress == list(range(1, len(progress) + 1)) and len(progress) >= len(new)


def test_sampling_equals_transformers_under_the_same_seed(llm, ctx):
    clip, model, tok = llm
    options = {"sampling_mode.temperature": 0.9, "sampling_mode.top_k": 20, "sampling_mode.top_p": 0.9,
               "sampling_mode.min_p": 0.02, "sampling_mode.repetition_penalty": 1.2, "sampling_mode.seed": 5}
    (first,) = TextGenerate().run(clip, "three yellow stars", 30, "on", **options)
    (again,) = TextGenerate().run(clip, "three yellow stars", 30, "on", **options)
    (other,) = TextGenerate().run(clip, "three yellow stars", 30, "on", **{**options, "sampling_mode.seed": 6})
    assert first == again and first != other
    torch.manual_seed(5)
    expected, _ = _reference(model, tok, "three yellow stars", max_new_tokens=30, do_sample=True,
                             temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2)
    assert first == expected


def test_an_interrupt_lands_between_tokens(llm, ctx):
    clip, model, tok = llm
    seen = []

    def emit(event, data):
        if event == "progress":
            seen.append(data["value"])
            if data["value"] == 3:
                ctx.interrupt_flag.set()

    ctx.emit = emit
    with pytest.raises(Interrupted):
        TextGenerate().run(clip, "a cat", 200, "off")
    assert seen == [1, 2, 3]


def test_presence_penalty_lowers_seen_tokens_once():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    seen = torch.tensor([[0, 0, 3]])
    s = lib.Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=2.0, presence_penalty=0.5)
    gen = torch.Generator().manual_seed(0)
    # 2.0 / 2 - 0.5 = 0.5 ; 1.0 ; 0.5 ; -1.0 * 2 - 0.5 = -2.5 -> the draw follows softmax of those
    probs = torch.softmax(torch.tensor([0.5, 1.0, 0.5, -2.5]), dim=0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[lib.next_token(logits, seen, s, gen)] += 1
    assert torch.allclose(counts / 4000, probs, atol=0.03)


def test_thinking_is_split_from_the_answer():
    assert lib.split_thinking("<think>\nhmm, red\n</think>\n\nA red circle.") == ("hmm, red", "A red circle.")
    assert lib.split_thinking("no thinking here") == ("", "no thinking here")


def test_a_clip_without_a_language_model_is_refused(tiny_models, ctx):
    from genloom.diffusion.models.loading import load_diffusers_folder

    bundle = load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(bundle.clip, "hello", 8, "off")
    assert err.value.input_name == "clip"
    with pytest.raises(NodeInputError) as err:
        TextGenerate().run(bundle.clip, "hello", 8, "off", image=torch.zeros(1, 8, 8, 3))
    assert err.value.input_name == "image"
