"""The one description of a node type that the rest of the engine works from.

Native genloom nodes (engine/node.py) and ComfyUI V1 classes (engine/v1.py) both compile to a
`NodeSchema`; validation, planning, execution and the /object_info export only ever see schemas.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

PRIMITIVE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# Option keys that are exported verbatim in /object_info entries.
_OPTION_ORDER = ("default", "min", "max", "step", "round", "multiline", "placeholder", "dynamicPrompts",
                 "label_on", "label_off", "forceInput", "lazy", "tooltip", "image_upload",
                 "control_after_generate")


@dataclass(slots=True)
class InputSpec:
    name: str
    type: str  # "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO" or a socket type ("IMAGE", "A,B", "*")
    section: str = "required"  # required | optional | hidden
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    tooltip: str = ""
    lazy: bool = False
    force_input: bool = False
    multiline: bool = False
    options: list | Callable[[], list] | None = None  # COMBO values, or a callable listing them now
    # A COMBO's deeper check of a listed value (a model file the loader cannot load): None or why.
    check: Callable[[Any], str | None] | None = None
    extra: dict = field(default_factory=dict)  # other option keys, exported as they are
    # ComfyUI's V3 dynamic inputs (Autogrow, DynamicCombo) are flat specs here, named as API graphs
    # name them ("images.image0", "resize_type.width"); `group` is the dynamic input a spec belongs
    # to, and the one spec that stands for the group in /object_info carries its `dynamic` entry.
    group: str | None = None
    dynamic: "Dynamic | None" = None

    @property
    def optional(self) -> bool:
        return self.section != "required"

    @property
    def is_widget(self) -> bool:
        """Inputs the editor shows as widgets (and stores in widgets_values)."""
        return (self.section != "hidden" and self.type in PRIMITIVE_TYPES and not self.force_input
                and not self.extra.get("forceInput"))  # a native node may spell it the ComfyUI way

    def combo_options(self) -> list:
        opts = self.options
        if callable(opts):
            opts = opts()
        return list(opts or [])

    def export(self) -> list | str:
        if self.section == "hidden":
            return self.type
        opts: dict[str, Any] = {}
        for key in _OPTION_ORDER:
            value = _option_value(self, key)
            if value is None or (key != "default" and (value is False or value == "")):
                continue
            opts[key] = value
        for key, value in self.extra.items():
            opts.setdefault(key, value)
        if self.type == "COMBO":
            return [self.combo_options(), opts]
        return [self.type, opts]


@dataclass(slots=True)
class Dynamic:
    """How a V3 dynamic input shows in /object_info: `[type, options]` under `name` in `section`;
    for a DynamicCombo, `children` are the flat names of each option's inputs, in the order the
    editor lays their widgets out after the combo's own."""

    type: str  # COMFY_AUTOGROW_V3 | COMFY_DYNAMICCOMBO_V3
    name: str
    section: str
    options: dict
    children: dict = field(default_factory=dict)


def _option_value(spec: InputSpec, key: str):
    if key == "forceInput":
        return spec.force_input
    if key in ("default", "min", "max", "step", "round", "tooltip", "lazy", "multiline"):
        return getattr(spec, key)
    return spec.extra.get(key)


@dataclass(slots=True)
class OutputSpec:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str = ""

    @property
    def label(self) -> str:
        return self.name or self.type


@dataclass(slots=True)
class NodeSchema:
    """Everything the engine knows of a node type; `factory().<function>` is what runs."""

    name: str
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    factory: Callable[[], Any]  # makes the object whose `function` is called
    function: str
    category: str = ""
    display_name: str = ""
    description: str = ""
    python_module: str = "genloom"
    output_node: bool = False
    version: str = "1.0.0"
    not_idempotent: bool = False
    input_is_list: bool = False
    is_v1: bool = False
    # Hooks; None when the node has none.
    fingerprint: Callable[..., Any] | None = None
    validate: Callable[..., Any] | None = None
    validate_params: frozenset = frozenset()  # input names the custom validation takes over
    validate_wants_input_types: bool = False
    check_lazy: str | None = None  # method name on the instance
    # Widgets the editor's own extension draws for this node (not in /object_info): widgets_values ->
    # the inputs they give, for the editor-format import. None when the node has none.
    editor_values: Callable[[Any], dict] | None = None
    source: str = "builtin"  # where it was registered from (builtin, a plugin pack's name)
    extra_info: dict = field(default_factory=dict)
    by_name: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.by_name = {spec.name: spec for spec in self.inputs}
        if not self.display_name:
            self.display_name = self.name

    @property
    def is_async(self) -> bool:
        factory = self.factory
        target = getattr(factory, self.function, None) if isinstance(factory, type) else None
        return inspect.iscoroutinefunction(target)

    @property
    def lazy_inputs(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs if spec.lazy)

    def exported_inputs(self):
        """(section, name, entry) of each input as /object_info lists it: a dynamic input once, as
        ComfyUI declares it, its flat members left out."""
        for spec in self.inputs:
            dynamic = spec.dynamic
            if dynamic is not None:
                yield dynamic.section, dynamic.name, [dynamic.type, dynamic.options]
            elif spec.group is None:
                yield spec.section, spec.name, spec.export()

    def object_info(self) -> dict:
        """The exact shape of a ComfyUI /object_info entry."""
        sections: dict[str, dict] = {"required": {}}
        order: dict[str, list] = {"required": []}
        for section, name, exported in self.exported_inputs():
            sections.setdefault(section, {})[name] = exported
            order.setdefault(section, []).append(name)  # ComfyUI lists hidden ones too
        return {
            "input": sections,
            "input_order": order,
            "is_input_list": self.input_is_list,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.label for o in self.outputs],
            "output_tooltips": [o.tooltip for o in self.outputs],
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


def types_match(received: str, expected: str) -> bool:
    """Socket compatibility: '*' matches anything, 'A,B' is a union on either side."""
    if received == expected or received == "*" or expected == "*":
        return True
    if "," not in received and "," not in expected:
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)
