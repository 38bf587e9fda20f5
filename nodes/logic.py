"""ComfyUI's logic, math and list nodes (comfy_extras/nodes_logic.py, nodes_math.py,
nodes_number_convert.py, nodes_resolution.py, nodes_toolkit.py) with the same names and results.

ComfyUI grows some inputs on demand (Autogrow): Math Expression's `values.a` ... `values.z`, And/Or's
`values.value0` ... `values.value9`, Create List's `inputs.input0` ... `inputs.input9`. /object_info
shows each as one COMFY_AUTOGROW_V3 input as ComfyUI does; the node receives the slots under the
names the editor sends in a prompt, so a workflow saved by ComfyUI runs unchanged. ComfyUI's MatchType
(the output takes the input's type) is "*" here.
"""

from __future__ import annotations

import string

from genloom.diffusion import expressions
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Autogrow, Boolean, Combo, Float, Input, Int, Node, Out, String

_MISSING = object()
_NUMERIC = "FLOAT,INT,BOOLEAN"


def _grown(group: str, slot: str, type_: str, required: int, **names) -> list:
    """An Autogrow input of `slot` sockets (prefix slots, or `names=`): the first `required` required;
    none when 0 (ComfyUI's optional template, whose `min` is still 1)."""
    return Autogrow(group, Input(slot, type_, optional=required == 0), min=max(required, 1), **names)


def _grown_values(schema_inputs, group: str, given: dict) -> dict:
    """The grown inputs a call received, by their short name, in declaration order."""
    prefix = group + "."
    return {spec.name[len(prefix):]: given[spec.name] for spec in schema_inputs
            if spec.name.startswith(prefix) and spec.name in given}


class ComfyMathExpression(Node):
    """Computes an arithmetic expression of the inputs a, b, c, ... (and `values`, the list of them)
    with + - * / // % **, comparisons, `x if c else y` and sum, min, max, abs, round, pow, sqrt, ceil,
    floor, log, log2, log10, sin, cos, tan, int, float. Gives the result as FLOAT, INT and BOOL."""

    category = "utilities"
    display_name = "Math Expression"
    inputs = [String("expression", "a + b", multiline=True),
              *_grown("values", "value", _NUMERIC, 0, names=list(string.ascii_lowercase))]
    outputs = [Out("FLOAT", "FLOAT"), Out("INT", "INT"), Out("BOOLEAN", "BOOL")]

    def run(self, expression, **values):
        names = _grown_values(self.inputs, "values", values)
        names["values"] = list(names.values())
        try:
            return expressions.evaluate_number(expression, names)
        except expressions.ExpressionError as exc:
            raise NodeInputError("expression", str(exc)) from exc


class ComfySwitchNode(Node):
    """Passes on `on_true` or `on_false`. Lazy: only the chosen branch runs."""

    category = "utilities/logic"
    display_name = "If/Else Switch"
    inputs = [Boolean("switch", None), Input("on_false", "*", optional=True, lazy=True),
              Input("on_true", "*", optional=True, lazy=True)]
    outputs = [Out("*", "output")]

    def check_lazy(self, switch, on_false=_MISSING, on_true=_MISSING):
        if switch and on_true is None:
            return ["on_true"]
        if not switch and on_false is None:
            return ["on_false"]
        return []

    def run(self, switch, on_false=_MISSING, on_true=_MISSING):
        chosen = on_true if switch else on_false
        return (None if chosen is _MISSING else chosen,)


class ComfyNotNode(Node):
    """True when the value is falsy (Python's truthiness: 0, "", an empty list and None are falsy)."""

    category = "utilities/logic"
    display_name = "Not"
    inputs = [Input("value", "*")]
    outputs = [Out("BOOLEAN")]

    def run(self, value):
        return (not value,)


_GATE_INPUTS = _grown("values", "value", "*", 1, prefix="value", max=10)


class ComfyAndNode(Node):
    """True when every connected value is truthy (Python's rules)."""

    category = "utilities/logic"
    display_name = "And"
    inputs = list(_GATE_INPUTS)
    outputs = [Out("BOOLEAN")]

    def run(self, **values):
        return (all(_grown_values(self.inputs, "values", values).values()),)


class ComfyOrNode(Node):
    """True when any connected value is truthy (Python's rules)."""

    category = "utilities/logic"
    display_name = "Or"
    inputs = list(_GATE_INPUTS)
    outputs = [Out("BOOLEAN")]

    def run(self, **values):
        return (any(_grown_values(self.inputs, "values", values).values()),)


class ComfyNumberConvert(Node):
    """An INT, FLOAT, STRING (parsed) or BOOLEAN as a FLOAT and an INT (truncated)."""

    category = "math"
    display_name = "Number Convert"
    inputs = [Input("value", "INT,FLOAT,STRING,BOOLEAN", display_name="value")]
    outputs = [Out("FLOAT", "FLOAT"), Out("INT", "INT")]

    def run(self, value):
        try:
            return expressions.convert_number(value)
        except expressions.ExpressionError as exc:
            raise NodeInputError("value", str(exc)) from exc


class CustomCombo(Node):
    """A drop-down whose options the user types in the editor; gives the chosen text and its index.
    The options are the editor's own widgets, so any choice is accepted here."""

    category = "utilities"
    display_name = "Custom Combo"
    inputs = [Combo("choice", []), Input("index", "INT", optional=True)]
    outputs = [Out("STRING", "STRING"), Out("INT", "INDEX")]

    @classmethod
    def validate(cls, **inputs):
        return True  # the options live in the editor, not in this definition

    @classmethod
    def editor_values(cls, values) -> dict:
        """The editor's extension saves [choice, index, option1, option2, ...] (older editors left the
        index out: [choice, option1, ...]); the index is the one number after the choice."""
        if isinstance(values, dict):
            index = values.get("index")
        else:
            index = values[1] if len(values) > 1 else None
        if isinstance(index, int) and not isinstance(index, bool):
            return {"index": index}
        return {}

    def run(self, choice, index=0):
        return (choice, index)


class ResolutionSelector(Node):
    """Width and height for a target size in megapixels at an aspect ratio, multiples of `multiple`
    and at least `minimum` on each side (e.g. for Empty Latent Image)."""

    category = "utilities"
    display_name = "Resolution Selector"
    inputs = [
        Combo("aspect_ratio", list(expressions.ASPECT_RATIOS), "1:1 (Square)", tooltip="The aspect ratio."),
        Float("megapixels", 1.0, min=0.1, max=16.0, step=0.1,
              tooltip="Target size in megapixels; 1.0 is about 1024x1024 when square."),
        Int("multiple", 8, min=8, max=128, step=4, advanced=True,
            tooltip="Both sides are rounded to a multiple of this."),
        Int("minimum", 256, min=32, max=4096, step=32, advanced=True,
            tooltip="The smallest side allowed."),
    ]
    outputs = [Out("INT", "width", tooltip="Width in pixels."), Out("INT", "height", tooltip="Height in pixels.")]

    def run(self, aspect_ratio, megapixels, multiple=8, minimum=256):
        return expressions.resolution(aspect_ratio, megapixels, multiple, minimum)


class CreateList(Node):
    """Joins its inputs, in order, into one list; the nodes it feeds run once per item."""

    category = "utilities"
    display_name = "Create List"
    input_is_list = True
    inputs = _grown("inputs", "input", "*", 1, prefix="input", max=10)
    outputs = [Out("*", "list", is_list=True)]

    def run(self, **inputs):
        items = []
        for values in _grown_values(self.inputs, "inputs", inputs).values():
            items.extend(values)
        return (items,)


class GetItemFromList(Node):
    """One item of a list (negative indices count from the end)."""

    category = "utilities"
    display_name = "Get Item From List"
    input_is_list = True
    inputs = [Input("list", "*"), Int("index", 0, min=None, max=None, step=None)]
    outputs = [Out("*")]

    def run(self, list, index):  # noqa: A002 - ComfyUI's input name
        position = index[0]
        try:
            return (list[position],)
        except IndexError:
            raise NodeInputError("index", f"index {position} is out of range for a list of {len(list)}") from None


NODES = [ComfyMathExpression, ComfySwitchNode, ComfyNotNode, ComfyAndNode, ComfyOrNode, ComfyNumberConvert,
         CustomCombo, ResolutionSelector, CreateList, GetItemFromList]
