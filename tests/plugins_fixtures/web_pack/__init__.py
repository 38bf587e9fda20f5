"""A pack with a web extension: WEB_DIRECTORY's scripts are listed by /extensions and loaded by the
editor."""

WEB_DIRECTORY = "./web"


class WebPackNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "go"
    CATEGORY = "tests/compat"

    def go(self):
        return ("web",)


NODE_CLASS_MAPPINGS = {"WebPackNode": WebPackNode}
