"""Compiles ComfyUI V1 node classes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...) to `NodeSchema`s,
so that plugin modules exporting NODE_CLASS_MAPPINGS run unchanged."""

from __future__ import annotations

import inspect

from .errors import NodeDefinitionError
from .schema import InputSpec, NodeSchema, OutputSpec

_SPEC_KEYS = {"default", "min", "max", "step", "round", "tooltip", "lazy", "multiline"}

def is_v1_class(obj) -> bool:
    return isinstance(obj, type) and hasattr(obj, "INPUT_TYPES") and hasattr(obj, "FUNCTION")


def _input_spec(name: str, section: str, decl) -> InputSpec:
    if section == "hidden":
        return InputSpec(name=name, type=str(decl), section="hidden")
    if isinstance(decl, str):  # tolerated shorthand: "IMAGE"
        decl = (decl,)
    if not isinstance(decl, (tuple, list)) or not decl:
        raise NodeDefinitionError(f"input {name!r}: expected (TYPE, options), got {decl!r}")
    type_, opts = decl[0], (decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {})
    options = None
    if isinstance(type_, (list, tuple)):
        options, type_ = list(type_), "COMBO"
    elif type_ == "COMBO" and "options" in opts:
        options = list(opts["options"])
    known = {k: opts[k] for k in _SPEC_KEYS if k in opts}
    # Explicit False/"" settings are kept verbatim too, so /object_info gives back what was declared.
    extra = {k: v for k, v in opts.items()
             if k != "options" and (k not in _SPEC_KEYS and k != "forceInput" or v is False or v == "")}
    return InputSpec(name=name, type=str(type_), section=section, options=options,
                     force_input=bool(opts.get("forceInput", False)), extra=extra, **known)


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
    function = cls.FUNCTION
    if not hasattr(cls, function):
        raise NodeDefinitionError(f"{name}: FUNCTION {function!r} is not a method of the class")
    return NodeSchema(
        name=name,
        inputs=inputs,
        outputs=outputs,
        factory=cls,
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
    )
