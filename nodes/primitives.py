"""Constant values as nodes, so a graph can feed one number or text into many inputs."""

from genloom.engine.node import Boolean, Float, Int, Node, Out, String


class PrimitiveInt(Node):
    """An integer constant."""

    category = "utils/primitive"
    inputs = [Int("value", 0, tooltip="The integer.")]
    outputs = [Out("INT")]

    def run(self, value):
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point constant."""

    category = "utils/primitive"
    inputs = [Float("value", 0.0, tooltip="The number.")]
    outputs = [Out("FLOAT")]

    def run(self, value):
        return (value,)


class PrimitiveString(Node):
    """A text constant."""

    category = "utils/primitive"
    inputs = [String("value", "", tooltip="The text.")]
    outputs = [Out("STRING")]

    def run(self, value):
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line text constant."""

    category = "utils/primitive"
    inputs = [String("value", "", multiline=True, tooltip="The text.")]
    outputs = [Out("STRING")]

    def run(self, value):
        return (value,)


class PrimitiveBoolean(Node):
    """A true/false constant."""

    category = "utils/primitive"
    inputs = [Boolean("value", False, tooltip="The flag.")]
    outputs = [Out("BOOLEAN")]

    def run(self, value):
        return (value,)


NODES = [PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean]
