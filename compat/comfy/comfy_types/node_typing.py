"""ComfyUI's `comfy.comfy_types.node_typing`: the socket type names and the typing helpers of V1
nodes. `IO.ANY` ("*") equals every type name, as in ComfyUI."""

from __future__ import annotations

from abc import ABC
from enum import Enum
from typing import Literal, TypedDict


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class IO(StrEnum):
    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, value: object) -> bool:
        if not isinstance(value, str):
            return True
        mine, theirs = str.__str__(self.value), str(value)
        if mine == "*" or theirs == "*":
            return False
        return not set(theirs.split(",")) & set(mine.split(","))

    def __eq__(self, value: object) -> bool:
        return not self.__ne__(value)

    __hash__ = str.__hash__


class InputTypeOptions(TypedDict, total=False):
    default: object
    defaultInput: bool
    forceInput: bool
    lazy: bool
    rawLink: bool
    tooltip: str
    min: float
    max: float
    step: float
    round: float
    label_on: str
    label_off: str
    multiline: bool
    placeholder: str
    dynamicPrompts: bool
    image_upload: bool


class InputTypeDict(TypedDict, total=False):
    required: dict
    optional: dict
    hidden: dict


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: Literal["input", "output", "temp"]


class ComfyNodeABC(ABC):
    """A base class V1 nodes may derive from for type hints; it adds no behaviour."""

    DESCRIPTION: str
    CATEGORY: str
    EXPERIMENTAL: bool = False
    DEPRECATED: bool = False


class CheckLazyMixin:
    """A default check_lazy_status: every lazy input that is still None is needed."""

    def check_lazy_status(self, **kwargs):
        return [name for name, value in kwargs.items() if value is None]
