from ... import helpers
from ...pkg import mod
from .c import deeper


class DeepJoin:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "x"})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "join"
    CATEGORY = "tests/compat"

    def join(self, text):
        return (" ".join([mod.PREFIX, helpers.shout(text), deeper()]),)
