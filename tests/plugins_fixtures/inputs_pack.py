"""Inputs as ComfyUI passes them: a catch-all optional section, fewer values than RETURN_TYPES, and
a class without FUNCTION (listed, fails when run)."""


class AnyType(str):
    def __ne__(self, other):
        return False


ANY = AnyType("*")


class EveryKey(dict):
    """Claims every input name, as some packs' INPUT_TYPES do."""

    def __contains__(self, key):
        return True

    def __getitem__(self, key):
        return dict.get(self, key, (ANY,))


class JoinAll:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sep": ("STRING", {"default": ","})}, "optional": EveryKey()}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "join"
    CATEGORY = "tests/compat"

    def join(self, sep, **extra):
        return (sep.join(f"{k}={extra[k]}" for k in sorted(extra)),)


class HalfReturn:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 4})}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "half"
    CATEGORY = "tests/compat"

    def half(self, value):
        return (value // 2,)


class NoFunction:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    CATEGORY = "tests/compat"


NODE_CLASS_MAPPINGS = {"JoinAll": JoinAll, "HalfReturn": HalfReturn, "NoFunction": NoFunction}
