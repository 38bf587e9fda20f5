"""`from comfy_api.latest import io`: the V3 node API (types, Schema, ComfyNode, NodeOutput)."""

from ._node import ComfyExtension, ComfyNode, Hidden, HiddenHolder, NodeOutput, Schema
from ._types import (SOCKETS, Autogrow, Boolean, ComfyTypeI, ComfyTypeIO, Combo, Custom, DynamicCombo, FolderType,
                     Float, Input, Int, MatchType, MultiType, NumberDisplay, Output, RemoteOptions, String,
                     UploadType, WidgetInput, comfytype)

globals().update(SOCKETS)  # Image, Mask, Latent, Conditioning, Model, Clip, Vae, AnyType, ...

MultiCombo = Combo

__all__ = ["Autogrow", "ComfyExtension", "ComfyNode", "Hidden", "HiddenHolder", "NodeOutput", "Schema",
           "ComfyTypeI", "ComfyTypeIO", "Combo", "MultiCombo", "Custom", "DynamicCombo", "FolderType", "Float",
           "Input", "Int", "MatchType", "MultiType", "NumberDisplay", "Output", "RemoteOptions", "String", "UploadType",
           "WidgetInput", "Boolean", "comfytype", *SOCKETS]
