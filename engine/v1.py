"""Compiles ComfyUI V1 node classes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...) to `NodeSchema`s,
so that plugin modules exporting NODE_CLASS_MAPPINGS run unchanged."""

from __future__ import annotations

import inspect

from .errors import NodeDefinitionError
from .schema import InputSpec, NodeSchema, OutputSpec

_SPEC_KEYS = {"default", "min", "max", "step", "round", "tooltip", "lazy", "multiline"}

_PROBE = "__genloom_any_input_probe__"


def is_v1_class(obj) -> bool:
    """A ComfyUI node class: INPUT_TYPES at least. One without FUNCTION is listed (as ComfyUI lists
    it in /object_info) and fails only when it runs."""
    return isinstance(obj, type) and hasattr(obj, "INPUT_TYPES")


def _input_spec(name: str, section: str, decl) -> InputSpec:
    if section == "hidden":
        if isinstance(decl, (tuple, list)) and decl:  # ("UNIQUE_ID",) as V3 classes write it
            decl = decl[0]
        return InputSpec(name=name, type=str(getattr(decl, "value", decl)), section="hidden")
    if isinstance(decl, str):  # tolerated shorthand: "IMAGE"
        decl = (decl,)
    if not isinstance(decl, (tuple, list)) or not decl:
        raise NodeDefinitionError(f"input {name!r}: expected (TYPE, options), got {decl!r}")
    type_, opts = decl[0], (decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {})
    options = _combo_list(type_, opts)
    if isinstance(type_, (list, tuple)):
        type_ = "COMBO"
    known = {k: opts[k] for k in _SPEC_KEYS if k in opts}
    # Explicit False/"" settings are kept verbatim too, so /object_info gives back what was declared.
    extra = {k: v for k, v in opts.items()
             if k != "options" and (k not in _SPEC_KEYS and k != "forceInput" or v is False or v == "")}
    return InputSpec(name=name, type=str(type_), section=section, options=options,
                     force_input=bool(opts.get("forceInput", False)), extra=extra, **known)


def _combo_list(type_, opts) -> list | None:
    if isinstance(type_, (list, tuple)):
        return list(type_)
    if type_ == "COMBO" and "options" in opts:
        return list(opts["options"])
    return None


class _LiveOptions:
    """A V1 COMBO's options, read again from INPUT_TYPES() whenever they are asked for (validation,
    /object_info), as ComfyUI does: a pack listing files (folder_paths.get_filename_list) sees files
    added since it loaded. Falls back to the list read at load time when INPUT_TYPES fails."""

    __slots__ = ("cls", "section", "name", "first")

    def __init__(self, cls, section: str, name: str, first: list):
        self.cls, self.section, self.name, self.first = cls, section, name, first

    def __call__(self) -> list:
        try:
            decl = (self.cls.INPUT_TYPES().get(self.section) or {})[self.name]
            opts = decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {}
            listed = _combo_list(decl[0], opts)
        except Exception:  # noqa: BLE001 - a plugin's own code
            listed = None
        return self.first if listed is None else listed


def compile_v1(name: str, cls, display_name: str | None = None, module: str = "custom_nodes") -> NodeSchema:
    try:
        declared = cls.INPUT_TYPES()
    except Exception as exc:  # noqa: BLE001 - a plugin's own code
        raise NodeDefinitionError(f"{name}.INPUT_TYPES() failed: {exc}") from exc
    inputs = [
        _input_spec(inp, section, decl)
        for section in ("required", "optional", "hidden")
        for inp, decl in (declared.get(section) or {}).items()
    ]
    for spec in inputs:
        if spec.type == "COMBO" and isinstance(spec.options, list):
            spec.options = _LiveOptions(cls, spec.section, spec.name, spec.options)
    # A section that claims every key (a dict subclass whose __contains__ is always true) takes inputs
    # it never declared: ComfyUI passes those through, and so does genloom (validate.NodeCheck).
    any_input = None
    for section in ("optional", "required"):
        group = declared.get(section)
        if group is not None and _claims_everything(group):
            any_input = section
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", ()) or ())
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    tooltips = tuple(getattr(cls, "OUTPUT_TOOLTIPS", ()) or ())
    outputs = [
        OutputSpec(
            type=t if isinstance(t, str) else "COMBO",
            name=names[i] if i < len(names) else None,
            is_list=bool(is_list[i]) if i < len(is_list) else False,
            tooltip=tooltips[i] if i < len(tooltips) else "",
        )
        for i, t in enumerate(return_types)
    ]
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    params = frozenset()
    if validate is not None:
        spec = inspect.getfullargspec(validate)
        params = frozenset({"*"}) if spec.varkw else frozenset(a for a in spec.args if a not in ("cls", "self"))
    function = getattr(cls, "FUNCTION", None)
    factory = cls
    if function is None:
        factory, function = _without_function(name, cls), _MISSING_FUNCTION
    elif not hasattr(cls, function):
        raise NodeDefinitionError(f"{name}: FUNCTION {function!r} is not a method of the class")
    if display_name is None:
        display_name = getattr(cls, "DISPLAY_NAME", None)  # V3 classes (compat) carry their schema's
    return NodeSchema(
        name=name,
        inputs=inputs,
        outputs=outputs,
        factory=factory,
        function=function,
        category=getattr(cls, "CATEGORY", "") or "",
        display_name=display_name or name,
        description=getattr(cls, "DESCRIPTION", "") or "",
        python_module=module,
        output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
        version=str(getattr(cls, "VERSION", "1.0.0")),
        not_idempotent=bool(getattr(cls, "NOT_IDEMPOTENT", False)),
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        is_v1=True,
        fingerprint=getattr(cls, "IS_CHANGED", None),
        validate=validate,
        validate_params=params,
        validate_wants_input_types="input_types" in params,
        check_lazy="check_lazy_status" if hasattr(cls, "check_lazy_status") else None,
        extra_info={"any_input": any_input} if any_input else {},
    )


def _claims_everything(group) -> bool:
    try:
        return _PROBE in group
    except Exception:  # noqa: BLE001 - a plugin's own container
        return False


_MISSING_FUNCTION = "_genloom_missing_function"


def _without_function(name: str, cls):
    """`cls` with a stand-in FUNCTION that says why the node cannot run."""
    def missing(self, **_inputs):
        raise NodeDefinitionError(f"{name} cannot run: its class defines no FUNCTION "
                                  "(ComfyUI lists such a node but cannot run it either)")

    try:
        return type(cls.__name__, (cls,), {_MISSING_FUNCTION: missing, "__module__": cls.__module__})
    except TypeError as exc:
        raise NodeDefinitionError(f"{name}: the class defines no FUNCTION") from exc
