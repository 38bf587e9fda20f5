"""The V3 socket types (`io.Int`, `io.Image`, `io.Combo`, `io.Custom("X")`, ...): each is a class
with an `io_type` and nested `Input`/`Output` declarations, which compile to V1-shaped
`(TYPE, options)` entries and from there to genloom's NodeSchema (engine/v1.py)."""

from __future__ import annotations

import copy
from enum import Enum
from typing import Any


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first",
                 timeout: int | None = None, max_retries: int | None = None, refresh: int | None = None):
        self.options = _pruned({"route": route, "refresh_button": refresh_button,
                                "control_after_refresh": control_after_refresh, "timeout": timeout,
                                "max_retries": max_retries, "refresh": refresh})

    def as_dict(self) -> dict:
        return dict(self.options)


class Input:
    """A socket input: `Image.Input("image", optional=True, tooltip=...)`."""

    Parent: type | None = None

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                 tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None,
                 raw_link: bool | None = None):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy, self.raw_link = tooltip, lazy, raw_link
        self.extra_dict = dict(extra_dict or {})

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def get_io_type(self) -> str:
        return self.io_type

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy,
                        "rawLink": self.raw_link}) | _pruned(self.extra_dict)

    def v1(self) -> tuple:
        return (self.get_io_type(), self.as_dict())

    def flat(self) -> list["Input"]:
        """This input and the ones nested in it (DynamicCombo options), as declared inputs."""
        return [self]

    def validate(self) -> None:
        pass


class WidgetInput(Input):
    def __init__(self, id: str, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None, raw_link=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def get_io_type(self) -> str:
        return self.widget_type or self.io_type

    def as_dict(self) -> dict:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "forceInput": self.force_input})


class Output:
    Parent: type | None = None

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def validate(self) -> None:
        pass


class ComfyTypeIO:
    """A socket type with Input and Output declarations; `io_type` is its name in workflows."""

    io_type: str = ""
    Type = Any

    class Input(Input):
        pass

    class Output(Output):
        pass


# The old names: a type with Inputs only, and one with both.
ComfyTypeI = ComfyTypeIO


def comfytype(io_type: str, **_kwargs):
    """Class decorator binding `io_type` to a type class and fresh copies of its Input/Output."""
    def bind(cls):
        if not issubclass(cls, ComfyTypeIO):
            cls = type(cls.__name__, (cls, ComfyTypeIO), {k: v for k, v in cls.__dict__.items()
                                                          if k not in ("__dict__", "__weakref__")})
        cls.io_type = io_type
        for part in ("Input", "Output"):
            base = getattr(cls, part, None)
            if base is not None:
                setattr(cls, part, type(base.__name__, (base,), {"Parent": cls, "__module__": cls.__module__,
                                                                 "__qualname__": f"{cls.__name__}.{part}"}))
        return cls
    return bind


def Custom(io_type: str) -> type:
    """A socket type of a pack's own: `io.Custom("MY_THING").Input("thing")`."""
    return comfytype(io_type)(type(f"Custom_{io_type}", (ComfyTypeIO,), {}))


def _socket(io_type: str, name: str) -> type:
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__}))


@comfytype("BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     label_on=None, label_off=None, socketless=None, force_input=None, extra_dict=None,
                     raw_link=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self):
            return super().as_dict() | _pruned({"label_on": self.label_on, "label_off": self.label_off})


class _Number(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None, extra_dict=None, raw_link=None, round=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                         extra_dict, raw_link)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.control_after_generate, self.display_mode = control_after_generate, display_mode

    def as_dict(self):
        display = self.display_mode.value if isinstance(self.display_mode, Enum) else self.display_mode
        return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                            "round": self.round, "display": display,
                                            "control_after_generate": self.control_after_generate})


@comfytype("INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(_Number):
        pass


@comfytype("FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(_Number):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     min=None, max=None, step=None, round=None, display_mode=None, socketless=None,
                     force_input=None, extra_dict=None, raw_link=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, min, max, step, None,
                             display_mode, socketless, force_input, extra_dict, raw_link, round=round)


@comfytype("STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                     placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None,
                     extra_dict=None, raw_link=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self):
            return super().as_dict() | _pruned({"multiline": self.multiline or None,
                                                "placeholder": self.placeholder,
                                                "dynamicPrompts": self.dynamic_prompts})


@comfytype("COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                     default=None, control_after_generate=None, upload=None, image_folder=None, remote=None,
                     socketless=None, extra_dict=None, raw_link=None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                             extra_dict, raw_link)
            self.options = list(options or [])
            self.control_after_generate, self.upload = control_after_generate, upload
            self.image_folder, self.remote = image_folder, remote

        def as_dict(self):
            out = super().as_dict() | _pruned({
                "options": self.options, "control_after_generate": self.control_after_generate,
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})
            if self.upload is not None:
                out[self.upload.value] = True
            return out

    class Output(Output):
        def __init__(self, id=None, display_name=None, options=None, tooltip=None, is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = list(options or [])


_SOCKETS = {
    "Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING",
    "Sampler": "SAMPLER", "Sigmas": "SIGMAS", "Noise": "NOISE", "Guider": "GUIDER", "Clip": "CLIP",
    "ControlNet": "CONTROL_NET", "Vae": "VAE", "Model": "MODEL", "ClipVision": "CLIP_VISION",
    "ClipVisionOutput": "CLIP_VISION_OUTPUT", "StyleModel": "STYLE_MODEL", "Gligen": "GLIGEN",
    "UpscaleModel": "UPSCALE_MODEL", "LatentUpscaleModel": "LATENT_UPSCALE_MODEL", "Audio": "AUDIO",
    "Video": "VIDEO", "SVG": "SVG", "LoraModel": "LORA_MODEL", "LossMap": "LOSS_MAP", "Voxel": "VOXEL",
    "Mesh": "MESH", "Hooks": "HOOKS", "HookKeyframes": "HOOK_KEYFRAMES", "TimestepsRange": "TIMESTEPS_RANGE",
    "LatentOperation": "LATENT_OPERATION", "FlowControl": "FLOW_CONTROL", "Accumulation": "ACCUMULATION",
    "Photomaker": "PHOTOMAKER", "Point": "POINT", "FaceAnalysis": "FACE_ANALYSIS", "BBOX": "BBOX",
    "SEGS": "SEGS", "AnyType": "*", "MODEL_PATCH": "MODEL_PATCH", "AudioEncoder": "AUDIO_ENCODER",
    "AudioEncoderOutput": "AUDIO_ENCODER_OUTPUT", "Tracks": "TRACKS", "Webcam": "WEBCAM",
    "WanCameraEmbedding": "WAN_CAMERA_EMBEDDING", "Load3D": "LOAD_3D", "Load3DCamera": "LOAD3D_CAMERA",
}
SOCKETS = {name: _socket(io_type, name) for name, io_type in _SOCKETS.items()}


class MultiType:
    """An input that takes any of several types (`types=[io.Image, io.Mask]`); given an Input as
    `id`, that input's widget is used."""

    io_type = "COMFY_MULTITYPED_V3"

    class Input(Input):
        def __init__(self, id, types, display_name=None, optional=False, tooltip=None, lazy=None,
                     extra_dict=None, raw_link=None):
            self.input_override = None
            if isinstance(id, Input):
                self.input_override = copy.copy(id)
                optional = optional or id.optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                id = id.id
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
            self.types = list(types)

        def get_io_type(self) -> str:
            names = [t.io_type for t in self.types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self):
            base = self.input_override.as_dict() if self.input_override is not None else {}
            return base | super().as_dict()


class MatchType:
    """Inputs and outputs that share one type, chosen by what is connected (`Template`). genloom
    checks such sockets against the template's allowed types (any type for AnyType)."""

    io_type = "COMFY_MATCHTYPE_V3"

    class Template:
        def __init__(self, template_id: str, allowed_types=None):
            allowed = allowed_types if allowed_types is not None else [SOCKETS["AnyType"]]
            self.template_id = template_id
            self.allowed_types = list(allowed) if isinstance(allowed, (list, tuple)) else [allowed]

        def type_name(self) -> str:
            names = [t.io_type for t in self.allowed_types]
            return "*" if "*" in names else ",".join(names)

    class Input(Input):
        def __init__(self, id, template, display_name=None, optional=False, tooltip=None, lazy=None,
                     extra_dict=None, raw_link=None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
            self.template = template

        def get_io_type(self) -> str:
            return self.template.type_name()

    class Output(Output):
        def __init__(self, template, id=None, display_name="MATCHTYPE", tooltip=None, is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.template = template

        @property
        def io_type(self) -> str:
            return self.template.type_name()


class DynamicCombo:
    """A choice whose options bring inputs of their own: genloom's DynamicCombo (engine/node.py),
    the options' inputs named `choice.input` in prompts; `execute` receives `choice={"choice": key,
    <the chosen option's inputs>}`, as in ComfyUI. INPUT_TYPES lists them flat (the choice a COMBO,
    every option's inputs optional)."""

    io_type = "COMFY_DYNAMICCOMBO_V3"

    class Option:
        def __init__(self, key: str, inputs: list):
            self.key, self.inputs = key, list(inputs)

    class Input(Input):
        def __init__(self, id, options, display_name=None, optional=False, tooltip=None, lazy=None,
                     extra_dict=None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self.options = list(options)

        def get_io_type(self) -> str:
            return "COMBO"

        def as_dict(self):
            keys = [o.key for o in self.options]
            return super().as_dict() | {"options": keys, "default": keys[0] if keys else None}

        def flat(self):
            out = [self]
            for option in self.options:
                for inner in option.inputs:
                    for item in inner.flat():
                        nested = copy.copy(item)
                        nested.id, nested.optional = f"{self.id}.{item.id}", True
                        out.append(nested)
            return out

        def regroup(self, values: dict) -> None:
            """Replace the flat `choice.x` values by the `choice` dict of the chosen option."""
            key = values.get(self.id)
            chosen = {self.id: key}
            for option in self.options:
                for inner in option.inputs:
                    for item in inner.flat():
                        value = values.pop(f"{self.id}.{item.id}", None)
                        if option.key == key:
                            chosen[item.id] = value
            for option in self.options:
                if option.key == key:
                    for inner in option.inputs:
                        if isinstance(inner, DynamicCombo.Input):
                            inner.regroup(chosen)
            values[self.id] = chosen


class Autogrow:
    """Sockets that grow as they are connected: `Autogrow.Input(id, template=Autogrow.TemplatePrefix(
    io.Image.Input("image"), prefix="image", min=1, max=10))` (slots image0 ... image9) or
    `TemplateNames(input, names=[...], min=1)`. genloom's Autogrow (engine/node.py): the slots are named
    `id.slot` in prompts; `execute` receives `id={slot: value}` for the slots given, as in ComfyUI."""

    io_type = "COMFY_AUTOGROW_V3"
    _MaxNames = 100

    class _Template:
        def __init__(self, input: Input, min: int):
            if isinstance(input, (DynamicCombo.Input, Autogrow.Input)):
                raise ValueError("an Autogrow template cannot be a dynamic input")
            if min < 0:
                raise ValueError("an Autogrow template's min must be 0 or more")
            self.input, self.min = copy.copy(input), int(min)
            if isinstance(self.input, WidgetInput):
                self.input.force_input = True  # a grown slot is always a socket
            self.names: list[str] = []

    class TemplatePrefix(_Template):
        def __init__(self, input: Input, prefix: str, min: int = 1, max: int = 10):
            super().__init__(input, min)
            if not 1 <= max <= Autogrow._MaxNames:
                raise ValueError(f"an Autogrow template's max must be 1 to {Autogrow._MaxNames}")
            self.prefix, self.max = prefix, int(max)
            self.names = [f"{prefix}{i}" for i in range(self.max)]

    class TemplateNames(_Template):
        def __init__(self, input: Input, names: list, min: int = 1):
            super().__init__(input, min)
            self.names = list(names)[:Autogrow._MaxNames]

    class Input(Input):
        def __init__(self, id, template, display_name=None, optional=False, tooltip=None, lazy=None,
                     extra_dict=None):
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self.template = template

        def get_io_type(self) -> str:
            return self.template.input.get_io_type()

        def flat(self):
            """One input per slot, `id.slot`; the first `min` required unless the template is optional."""
            out = []
            for i, name in enumerate(self.template.names):
                slot = copy.copy(self.template.input)
                slot.id = f"{self.id}.{name}"
                slot.optional = self.optional or self.template.input.optional or i >= self.template.min
                out.append(slot)
            return out

        def regroup(self, values: dict) -> None:
            """Replace the `id.slot` values by `id={slot: value}` of the slots given."""
            grown = {}
            for name in self.template.names:
                key = f"{self.id}.{name}"
                if key in values:
                    grown[name] = values.pop(key)
            values[self.id] = grown
