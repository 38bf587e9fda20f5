"""Constant values as nodes, so a graph can feed one number or text into many inputs: ComfyUI's
PrimitiveInt/Float/String/StringMultiline/Boolean (comfy_extras/nodes_primitive.py), with its names,
ranges and no declared defaults (the editor starts such widgets at 0, "" or false)."""

import sys

from genloom.engine.node import Boolean, Float, Int, Node, Out, String


class PrimitiveInt(Node):
    """An integer constant; the editor adds its 'control after generate' widget (fixed by default)."""

    category = "utilities/primitive"
    display_name = "Int"
    inputs = [Int("value", None, min=-sys.maxsize, max=sys.maxsize, step=None, control_after_generate="fixed")]
    outputs = [Out("INT")]

    def run(self, value):
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""

    category = "utilities/primitive"
    display_name = "Float"
    inputs = [Float("value", None, min=-sys.maxsize, max=sys.maxsize, step=0.1, round=0.0001)]
    outputs = [Out("FLOAT")]

    def run(self, value):
        return (value,)


class PrimitiveString(Node):
    """A one-line text constant."""

    category = "utilities/primitive"
    display_name = "Text"
    inputs = [String("value", None)]
    outputs = [Out("STRING")]

    def run(self, value):
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line text constant."""

    category = "utilities/primitive"
    display_name = "Text (Multiline)"
    inputs = [String("value", None, multiline=True)]
    outputs = [Out("STRING")]

    def run(self, value):
        return (value,)


class PrimitiveBoolean(Node):
    """A true/false constant."""

    category = "utilities/primitive"
    display_name = "Boolean"
    inputs = [Boolean("value", None)]
    outputs = [Out("BOOLEAN")]

    def run(self, value):
        return (value,)


NODES = [PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean]
