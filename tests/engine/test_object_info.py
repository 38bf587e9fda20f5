"""The /object_info export: exactly ComfyUI's entry shape, for native and V1 nodes."""

import json

from genloom.engine.node import INT_MAX, Boolean, Combo, Float, Hidden, Input, Node, Out, Seed, String
from genloom.engine.registry import Registry
from genloom.runtime import build_registry
from genloom.engine.v1 import compile_v1

ENTRY_KEYS = {"input", "input_order", "is_input_list", "output", "output_is_list", "output_name",
              "output_tooltips", "name", "display_name", "description", "python_module", "category",
              "output_node"}


class FancySampler(Node):
    """Samples a latent with every kind of widget.

    Second paragraph: not part of the description.
    """

    category = "sampling/test"
    inputs = [
        Input("model", "MODEL", tooltip="The model."),
        Seed(tooltip="Noise seed."),
        Combo("sampler_name", lambda: ["euler", "ddim"], "euler"),
        Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        String("text", "", multiline=True, dynamicPrompts=True, placeholder="prompt"),
        Combo("image", ["a.png"], image_upload=True),
        Boolean("tiled", False, label_on="yes", label_off="no", optional=True),
        Input("mask", "MASK", optional=True, lazy=True),
        Hidden("prompt", "PROMPT"),
        Hidden("unique_id", "UNIQUE_ID"),
    ]
    outputs = [Out("LATENT", "latent", tooltip="The result."), Out("INT", "seeds", is_list=True)]


class Writer(Node):
    output_node = True
    display_name = "Write It"
    inputs = [Input("images", "IMAGE")]
    outputs = []


def test_native_entry_shape():
    info = FancySampler.schema().object_info()
    assert set(info) == ENTRY_KEYS
    assert info["input"] == {
        "required": {
            "model": ["MODEL", {"tooltip": "The model."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": INT_MAX, "step": 1, "tooltip": "Noise seed.",
                             "control_after_generate": True}],
            "sampler_name": [["euler", "ddim"], {"default": "euler"}],  # a COMBO is a bare list
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
            "text": ["STRING", {"default": "", "multiline": True, "placeholder": "prompt", "dynamicPrompts": True}],
            "image": [["a.png"], {"image_upload": True}],
        },
        "optional": {
            "tiled": ["BOOLEAN", {"default": False, "label_on": "yes", "label_off": "no"}],
            "mask": ["MASK", {"lazy": True}],
        },
        "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
    }
    assert info["input_order"] == {
        "required": ["model", "seed", "sampler_name", "cfg", "text", "image"],
        "optional": ["tiled", "mask"],
        "hidden": ["prompt", "unique_id"],
    }
    assert info["output"] == ["LATENT", "INT"] and info["output_is_list"] == [False, True]
    assert info["output_name"] == ["latent", "seeds"] and info["output_tooltips"] == ["The result.", ""]
    assert info["name"] == "FancySampler" and info["display_name"] == "Fancy Sampler"
    assert info["description"] == "Samples a latent with every kind of widget."
    assert info["category"] == "sampling/test" and info["output_node"] is False
    assert info["is_input_list"] is False
    json.dumps(info)  # plain JSON


def test_output_node_without_optional_sections():
    info = Writer.schema().object_info()
    assert info["input"] == {"required": {"images": ["IMAGE", {}]}}
    assert info["input_order"] == {"required": ["images"]}
    assert info["output_node"] is True and info["output"] == [] and info["display_name"] == "Write It"


class V1Node:
    DECLARED = {
        "required": {
            "image": ("IMAGE", {"tooltip": "Input image."}),
            "mode": (["fast", "slow"], {"default": "fast"}),
            "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "round": False,
                                   "display": "slider"}),
            "count": ("INT", {"default": 1, "min": 1, "max": 8, "forceInput": True}),
            "text": ("STRING", {"multiline": False, "default": "x", "dynamicPrompts": False}),
            "flag": ("BOOLEAN", {"default": True, "label_on": "on", "label_off": "off"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}),
        },
        "optional": {"extra": ("LATENT", {"lazy": True}), "note": ("STRING", {"forceInput": False})},
        "hidden": {"unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"},
    }

    @classmethod
    def INPUT_TYPES(cls):
        return cls.DECLARED

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_IS_LIST = (False, True)
    OUTPUT_TOOLTIPS = ("The image.", "The mask.")
    FUNCTION = "go"
    CATEGORY = "v1/test"
    DESCRIPTION = "A V1 node."
    OUTPUT_NODE = True
    INPUT_IS_LIST = True

    def go(self, **kw):
        return (None, None)


def as_json(value):
    return json.loads(json.dumps(value))


def test_v1_entry_round_trips_declared_options():
    info = compile_v1("V1Node", V1Node, "V1 Node", "custom_nodes.pack").object_info()
    assert set(info) == ENTRY_KEYS
    assert info["input"] == as_json(V1Node.DECLARED)  # every option key and value as declared
    assert info["input_order"] == {section: list(inputs) for section, inputs in V1Node.DECLARED.items()}
    assert info["output"] == ["IMAGE", "MASK"] and info["output_name"] == ["image", "mask"]
    assert info["output_is_list"] == [False, True] and info["output_tooltips"] == ["The image.", "The mask."]
    assert info["is_input_list"] is True and info["output_node"] is True
    widgets = [s.name for s in compile_v1("V1Node", V1Node).inputs if s.is_widget]
    assert widgets == ["mode", "strength", "text", "flag", "seed", "note"]  # forceInput count is a socket
    assert (info["name"], info["display_name"], info["python_module"], info["category"], info["description"]) == (
        "V1Node", "V1 Node", "custom_nodes.pack", "v1/test", "A V1 node.")


def test_v1_combo_declared_with_options_key_exports_bare_list():
    class ComboNode:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"pick": ("COMBO", {"options": ["a", "b"], "default": "b"})}}

        RETURN_TYPES = ("STRING",)
        FUNCTION = "go"

        def go(self, pick):
            return (pick,)

    info = compile_v1("ComboNode", ComboNode).object_info()
    assert info["input"]["required"]["pick"] == [["a", "b"], {"default": "b"}]


def test_registry_export_covers_every_node():
    reg = build_registry(entry_points_too=False)
    reg.register(FancySampler)
    reg.register(V1Node, name="V1Node")
    info = reg.object_info()
    assert {"PrimitiveInt", "FancySampler", "V1Node"} <= set(info)
    assert info["PrimitiveInt"]["input"]["required"]["value"][0] == "INT"
    assert all(set(entry) == ENTRY_KEYS for entry in info.values())
    json.dumps(info)
