"""TextGenerate: a language model loaded as a text encoder (Qwen3, Qwen2.5-VL...) writes text inside a
workflow (prompt expansion, rewriting), as ComfyUI's node does. The generation is
genloom.diffusion.text_generation; every token is a progress step and an interrupt point."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.node import INT_MAX, Boolean, DynamicCombo, Float, Input, Int, Node, Out, String

_SAMPLING = {
    "on": [Float("temperature", 0.7, min=0.01, max=2.0, step=0.000001),
           Int("top_k", 64, min=0, max=1000),
           Float("top_p", 0.95, min=0.0, max=1.0, step=0.01),
           Float("min_p", 0.05, min=0.0, max=1.0, step=0.01),
           Float("repetition_penalty", 1.05, min=0.0, max=5.0, step=0.01),
           Int("seed", 0, min=0, max=INT_MAX),
           Float("presence_penalty", 0.0, min=0.0, max=5.0, step=0.01, optional=True)],
    "off": [],
}


class TextGenerate(Node):
    """Writes text with the language model of the CLIP input, from the prompt (greedy when sampling
    is off, else seeded sampling) and, on a Qwen2.5-VL encoder, the pictures of `image` and the frames of
    `video` (taken as 24 fps and read at 1 fps, as ComfyUI reads them)."""

    category = "text"
    display_name = "Generate Text"
    inputs = [Input("clip", "CLIP", tooltip="A language-model text encoder (CLIPLoader)."),
              String("prompt", "", multiline=True, dynamicPrompts=True),
              Input("image", "IMAGE", optional=True),
              Input("video", "IMAGE", optional=True,
                    tooltip="Video frames as an image batch, taken as 24 fps; read at 1 fps."),
              Input("audio", "AUDIO", optional=True),
              Int("max_length", 512, min=1, max=32768, tooltip="The most tokens to write."),
              *DynamicCombo("sampling_mode", _SAMPLING),
              Boolean("thinking", False, optional=True,
                      tooltip="Let a reasoning model think first; the answer is what follows its thinking."),
              Boolean("use_default_template", True, optional=True,
                      tooltip="Wrap the prompt in the model's chat template.")]
    outputs = [Out("STRING", "generated_text")]

    def run(self, clip, prompt, max_length, sampling_mode, image=None, video=None, audio=None,
            thinking=False, use_default_template=True, **options):
        from genloom.diffusion import text_generation as lib

        if audio is not None:
            raise NodeInputError("audio", "no text encoder genloom loads reads audio (in ComfyUI only Gemma 4 "
                                          "E2B/E4B, with its audio tower, does); unlink audio")
        tower = any(getattr(getattr(m, "model", None), "visual", None) is not None
                    for m in getattr(clip, "text_encoders", ()))
        for name, what, value in (("image", "a picture", image), ("video", "frames", video)):
            if value is not None and not tower:
                raise NodeInputError(name, f"this CLIP has no vision tower to read {what} with (Qwen3, CLIP and "
                                           "T5 have none); load a Qwen2.5-VL encoder (CLIPLoader type "
                                           f"qwen_image) or unlink {name}")
        model, tokenizer = _language_model(clip)
        pictures = [] if image is None else [image[i:i + 1] for i in range(image.shape[0])]
        videos = [] if video is None else [lib.sample_video(video)]
        if videos and tokenizer.convert_tokens_to_ids("<|video_pad|>") in (None, tokenizer.unk_token_id):
            raise NodeInputError("video", "this encoder's tokenizer has no <|video_pad|> token; use Qwen's "
                                          "tokenizer files (qwen25_tokenizer) or unlink video")
        if pictures or videos:
            try:
                prompt = lib.place_pictures(prompt, len(pictures), templated=use_default_template, videos=len(videos))
            except ValueError as e:
                raise NodeInputError("prompt", str(e)) from None
        sampling = None
        if sampling_mode == "on":
            picked = {k.split(".", 1)[1]: v for k, v in options.items() if k.startswith("sampling_mode.")}
            sampling = lib.Sampling(**{k: v for k, v in picked.items() if k in lib.Sampling.__dataclass_fields__})
        text = lib.chat_prompt(tokenizer, prompt, thinking=thinking) if use_default_template else prompt
        ctx = context.current()
        written = lib.write(model, tokenizer, text, max_new_tokens=int(max_length), sampling=sampling,
                            templated=use_default_template, on_token=ctx.progress,
                            images=pictures, videos=videos)  # progress: interrupts too
        return (lib.split_thinking(written)[1] if thinking or lib.THINK_CLOSE in written else written,)


def _language_model(clip):
    """The CLIP's encoder that can write (a causal language model) and its tokenizer."""
    for model, tokenizer in zip(getattr(clip, "text_encoders", ()), getattr(clip, "tokenizers", ())):
        if hasattr(model, "generate") and hasattr(model, "get_output_embeddings") \
                and model.get_output_embeddings() is not None:
            return model, tokenizer
    raise NodeInputError("clip", "this CLIP holds no language model that can write text (CLIP and T5 "
                                 "encoders cannot); load a Qwen3 or Qwen2.5-VL text encoder with CLIPLoader")


NODES = [TextGenerate]
