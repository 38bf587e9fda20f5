"""The native way to write a node: a small declarative class.

    class EmptyLatentImage(Node):
        '''Creates an empty latent batch to start sampling from.'''
        category = "latent"
        inputs = [Int("width", 512, min=16, max=16384, step=8, tooltip="Width in pixels."), ...]
        outputs = [Out("LATENT")]

        def run(self, width, height, batch_size):
            return ({"samples": ...},)

`run` may be `async def`. It returns a tuple of outputs (one per declared output), a single value
when the node declares exactly one output and the value is not a tuple, or a `NodeOutput` carrying a UI
payload and/or an expansion. Optional classmethods: `fingerprint(**constants)` (the node re-runs when
the value changes), `validate(**constants)` (True or an error string); optional method
`check_lazy(**inputs)` returning the lazy inputs still needed; optional classmethod
`editor_values(widgets_values)` for widgets the editor's own extension adds to the node (they are not
in its definition), returning the inputs they give when an editor file is imported.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar

from .errors import NodeInputError
from .schema import PRIMITIVE_TYPES as _WIDGET_TYPES
from .schema import Dynamic, InputSpec, NodeSchema, OutputSpec

INT_MAX = 0xFFFFFFFFFFFFFFFF


def _spec(name, type_, default, optional, hidden=False, **kw) -> InputSpec:
    section = "hidden" if hidden else ("optional" if optional else "required")
    known = {k: kw.pop(k) for k in list(kw) if k in InputSpec.__dataclass_fields__}
    return InputSpec(name=name, type=type_, section=section, default=default, extra=kw, **known)


def Int(name: str, default: int = 0, *, min: int = -INT_MAX, max: int = INT_MAX, step: int = 1,
        tooltip: str = "", optional: bool = False, lazy: bool = False, **extra) -> InputSpec:
    return _spec(name, "INT", default, optional, min=min, max=max, step=step, tooltip=tooltip,
                 lazy=lazy, **extra)


def Seed(name: str = "seed", default: int = 0, *, tooltip: str = "Random seed.", **extra) -> InputSpec:
    """An INT seed; the editor adds its 'control after generate' widget."""
    return Int(name, default, min=0, max=INT_MAX, tooltip=tooltip, control_after_generate=True, **extra)


def Float(name: str, default: float = 0.0, *, min: float = -1e18, max: float = 1e18, step: float = 0.01,
          round: float | bool | None = None, tooltip: str = "", optional: bool = False,
          lazy: bool = False, **extra) -> InputSpec:
    return _spec(name, "FLOAT", default, optional, min=min, max=max, step=step, round=round,
                 tooltip=tooltip, lazy=lazy, **extra)


def String(name: str, default: str = "", *, multiline: bool = False, tooltip: str = "",
           optional: bool = False, lazy: bool = False, **extra) -> InputSpec:
    return _spec(name, "STRING", default, optional, multiline=multiline, tooltip=tooltip, lazy=lazy,
                 **extra)


def Boolean(name: str, default: bool = False, *, tooltip: str = "", optional: bool = False,
            lazy: bool = False, **extra) -> InputSpec:
    return _spec(name, "BOOLEAN", default, optional, tooltip=tooltip, lazy=lazy, **extra)


def Combo(name: str, options: list | Callable[[], list], default: Any = None, *, tooltip: str = "",
          optional: bool = False, lazy: bool = False, check: Callable[[Any], str | None] | None = None,
          **extra) -> InputSpec:
    """A choice among `options` (a list, or a callable listing them at validation/export time).
    `check(value)` looks deeper at a listed value during validation and returns why it cannot be used,
    or None (a loader reading a model file's header)."""
    return _spec(name, "COMBO", default, optional, options=options, tooltip=tooltip, lazy=lazy,
                 check=check, **extra)


def Input(name: str, type: str, *, tooltip: str = "", optional: bool = False, lazy: bool = False,
          **extra) -> InputSpec:
    """A socket input (IMAGE, LATENT, MODEL, ...): always linked, never a widget."""
    if type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):  # a primitive socket: not a widget
        extra.setdefault("force_input", True)
    return _spec(name, type, None, optional, tooltip=tooltip, lazy=lazy, **extra)


def Autogrow(name: str, template: InputSpec, *, prefix: str | None = None, names: list[str] | None = None,
             min: int = 1, max: int = 10, tooltip: str = "") -> list[InputSpec]:
    """ComfyUI's growing input (io.Autogrow): slots `{name}.{prefix}0` ... `{name}.{prefix}{max-1}`, or
    `{name}.{n}` for each of `names`, each a copy of `template`; the first `min` are required unless the
    template is optional. Spread it into `inputs`; `run` receives the slots by their flat names. The
    editor grows the sockets itself: /object_info shows one COMFY_AUTOGROW_V3 entry, as ComfyUI does."""
    slots = [f"{prefix}{i}" for i in range(max)] if names is None else list(names)
    required = not template.optional
    shown = replace(template, extra=dict(template.extra))
    if shown.type in _WIDGET_TYPES:  # a grown slot is always a socket
        shown.force_input = True
    info: dict[str, Any] = {"template": {"input": _input_dict([shown])}}
    info["template"].update({"prefix": prefix, "min": min, "max": max} if names is None
                            else {"names": slots, "min": min})
    if tooltip:
        info["tooltip"] = tooltip
    members = [replace(shown, name=f"{name}.{slot}", extra=dict(shown.extra), group=name,
                       section="required" if required and i < min else "optional")
               for i, slot in enumerate(slots)]
    members[0].dynamic = Dynamic("COMFY_AUTOGROW_V3", name, "required", info)
    return members


def DynamicCombo(name: str, options: dict[str, list[InputSpec]], *, tooltip: str = "",
                 optional: bool = False) -> list[InputSpec]:
    """ComfyUI's combo whose choice brings its own inputs (io.DynamicCombo): the choice is `name`, an
    option's inputs arrive as `{name}.{input}` (optional here: only the chosen option's are sent).
    /object_info shows one COMFY_DYNAMICCOMBO_V3 entry; the editor lays the chosen option's widgets out
    right after the combo's, which is how editor files are read back."""
    info: dict[str, Any] = {"options": [{"key": key, "inputs": _input_dict(specs)} for key, specs in options.items()]}
    if tooltip:
        info["tooltip"] = tooltip
    children = {key: [f"{name}.{spec.name}" for spec in specs] for key, specs in options.items()}
    section = "optional" if optional else "required"
    combo = _spec(name, "COMBO", None, optional, options=list(options), tooltip=tooltip)
    combo.group, combo.dynamic = name, Dynamic("COMFY_DYNAMICCOMBO_V3", name, section, info, children)
    flat: dict[str, InputSpec] = {}
    for specs in options.values():
        for spec in specs:
            key = f"{name}.{spec.name}"
            seen = flat.get(key)
            if seen is None:
                flat[key] = replace(spec, name=key, section="optional", extra=dict(spec.extra), group=name)
            elif seen.type == "COMBO" and spec.type == "COMBO":  # one check takes every option's choices
                choices = seen.combo_options()
                seen.options = choices + [c for c in spec.combo_options() if c not in choices]
    return [combo, *flat.values()]


def _input_dict(specs: list[InputSpec]) -> dict:
    """A V1 INPUT_TYPES dict of `specs` as /object_info writes one ("required" always present)."""
    out: dict[str, dict] = {"required": {}}
    for spec in specs:
        out.setdefault(spec.section, {})[spec.name] = spec.export()
    return out


def Hidden(name: str, type: str) -> InputSpec:
    """Values the engine supplies: PROMPT, EXTRA_PNGINFO, UNIQUE_ID, DYNPROMPT."""
    return _spec(name, type, None, True, hidden=True)


def Out(type: str, name: str | None = None, *, is_list: bool = False, tooltip: str = "") -> OutputSpec:
    return OutputSpec(type=type, name=name, is_list=is_list, tooltip=tooltip)


@dataclass
class NodeOutput:
    """A node's result with extras: a UI payload (output nodes) and/or an expansion.

    `expand` is an API-format graph of new nodes; values in `outputs` may then be links
    `[local_id, slot]` into it, and the node's outputs become those nodes' outputs.
    """

    outputs: tuple = ()
    ui: dict | None = None
    expand: dict | None = None

    def __init__(self, *outputs, ui: dict | None = None, expand: dict | None = None):
        self.outputs, self.ui, self.expand = tuple(outputs), ui, expand


@dataclass(frozen=True)
class Blocker:
    """An output value that stops its consumers from running. With a message, that is an error."""

    message: str | None = None


class Node:
    name: ClassVar[str | None] = None  # registry name; the class name when None
    category: ClassVar[str] = "genloom"
    display_name: ClassVar[str | None] = None
    description: ClassVar[str | None] = None  # the docstring's first paragraph when None
    version: ClassVar[str] = "1.0.0"
    output_node: ClassVar[bool] = False
    not_idempotent: ClassVar[bool] = False
    input_is_list: ClassVar[bool] = False
    inputs: ClassVar[list[InputSpec]] = []
    outputs: ClassVar[list[OutputSpec]] = []

    def run(self, **inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not hasattr(run, "__genloom_node__"):
            cls.run = _names_node(run, cls.name or cls.__name__)

    @classmethod
    def schema(cls) -> NodeSchema:
        cached = cls.__dict__.get("_schema")
        if cached is not None:
            return cached
        doc = cls.description
        if doc is None:
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        validate = getattr(cls, "validate", None)
        schema = NodeSchema(
            name=cls.name or cls.__name__,
            inputs=list(cls.inputs),
            outputs=list(cls.outputs),
            factory=cls,
            function="run",
            category=cls.category,
            display_name=cls.display_name or _spaced(cls.name or cls.__name__),
            description=doc,
            python_module=cls.__module__,
            output_node=cls.output_node,
            version=cls.version,
            not_idempotent=cls.not_idempotent,
            input_is_list=cls.input_is_list,
            fingerprint=getattr(cls, "fingerprint", None),
            validate=validate,
            validate_params=_param_names(validate),
            validate_wants_input_types="input_types" in _param_names(validate),
            check_lazy="check_lazy" if hasattr(cls, "check_lazy") else None,
            editor_values=getattr(cls, "editor_values", None),
        )
        cls._schema = schema
        return schema


def _names_node(run, class_type: str):
    """Wrap `run` so that a NodeInputError it raises names this node class, called through the
    executor or directly; nodes never write their own name into messages."""
    def name(exc: NodeInputError) -> None:
        if exc.class_type is None:
            exc.class_type = class_type

    if inspect.iscoroutinefunction(run):
        @functools.wraps(run)
        async def wrapper(self, *args, **kwargs):
            try:
                return await run(self, *args, **kwargs)
            except NodeInputError as exc:
                name(exc)
                raise
    else:
        @functools.wraps(run)
        def wrapper(self, *args, **kwargs):
            try:
                return run(self, *args, **kwargs)
            except NodeInputError as exc:
                name(exc)
                raise
    wrapper.__genloom_node__ = class_type
    return wrapper


def _param_names(fn) -> frozenset:
    if fn is None:
        return frozenset()
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return frozenset({"*"})  # takes everything: all built-in range checks are its own
    return frozenset(p.name for p in params)


def _spaced(name: str) -> str:
    """'CLIPSetLastLayer' -> 'CLIP Set Last Layer'."""
    out = []
    for i, ch in enumerate(name):
        if i and ch.isupper():
            prev_lower = name[i - 1].islower() or name[i - 1].isdigit()
            next_lower = i + 1 < len(name) and name[i + 1].islower()
            if prev_lower or (name[i - 1].isupper() and next_lower):
                out.append(" ")
        out.append(ch)
    return "".join(out)
