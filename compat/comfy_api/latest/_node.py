"""V3 nodes: `class N(io.ComfyNode)` with `define_schema()` and `execute(cls, **inputs)`.

A V3 class shows the V1 surface (INPUT_TYPES, RETURN_TYPES, FUNCTION = "EXECUTE_NORMALIZED", ...),
computed from its schema, so genloom's V1 compiler (engine/v1.py) turns it into a NodeSchema and the
executor calls it like any V1 node: EXECUTE_NORMALIZED takes the hidden values out of the inputs
(into `cls.hidden`), regroups DynamicCombo inputs, calls `execute` and returns ComfyUI's V1 dict
shape (result, ui, expand); `block_execution` becomes genloom's Blocker on every output.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta
from enum import Enum
from typing import Any

from genloom.engine import node as engine_node
from genloom.engine.node import Blocker, Node
from genloom.engine.v1 import compile_v1

from ._types import Autogrow, DynamicCombo


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """`cls.hidden.unique_id`, `.prompt`, ...: the hidden values of the call; None when not declared."""

    def __init__(self, values: dict | None = None):
        self._values = dict(values or {})

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._values.get(name)


class Schema:
    """What a V3 node declares; the fields and defaults ComfyUI's Schema has (unknown ones are kept)."""

    def __init__(self, node_id: str, display_name: str | None = None, category: str = "sd", inputs=None,
                 outputs=None, hidden=None, description: str = "", is_input_list: bool = False,
                 is_output_node: bool = False, is_deprecated: bool = False, is_experimental: bool = False,
                 is_api_node: bool = False, not_idempotent: bool = False, enable_expand: bool = False,
                 **extra):
        self.node_id, self.display_name, self.category = node_id, display_name, category
        self.inputs, self.outputs, self.hidden = list(inputs or []), list(outputs or []), list(hidden or [])
        self.description, self.is_input_list, self.is_output_node = description, is_input_list, is_output_node
        self.is_deprecated, self.is_experimental, self.is_api_node = is_deprecated, is_experimental, is_api_node
        self.not_idempotent, self.enable_expand, self.extra = not_idempotent, enable_expand, extra

    def finalize(self) -> "Schema":
        """Output nodes get PROMPT and EXTRA_PNGINFO; outputs without ids get `_{i}_{TYPE}_`."""
        if self.is_output_node:
            for hidden in (Hidden.prompt, Hidden.extra_pnginfo):
                if hidden not in self.hidden:
                    self.hidden.append(hidden)
        for i, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"
        return self

    def validate(self) -> None:
        ids = [i.id for item in self.inputs for i in item.flat()]
        out_ids = [o.id for o in self.outputs]
        problems = []
        for label, seq in (("Input", ids), ("Output", out_ids)):
            repeated = sorted({x for x in seq if seq.count(x) > 1})
            if repeated:
                problems.append(f"{label} ids must be unique, but {repeated} are not.")
        shared = set(ids) & set(out_ids)
        if shared:
            problems.append(f"Ids must be unique between inputs and outputs, but {sorted(shared)} are not.")
        if problems:
            raise ValueError("\n".join(problems))

    def input_types(self) -> dict:
        out: dict = {"required": {}}
        for item in self.inputs:
            for inp in item.flat():
                type_, options = inp.v1()
                out.setdefault("optional" if inp.optional else "required", {})[inp.id] = (type_, options)
        if self.hidden:
            out["hidden"] = {Hidden(h).name: Hidden(h).value for h in self.hidden}
        return out


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict | None = None, block_execution: str | None = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    @classmethod
    def from_dict(cls, data: dict) -> "NodeOutput":
        result = data.get("result", ())
        if isinstance(result, Blocker):
            return cls(block_execution=result.message)
        return cls(*(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index):
        return self.args[index]


class _NodeMeta(ABCMeta):
    """The V1 attributes, read from the schema the first time they are asked for."""

    def _schema(cls) -> Schema:
        if "_genloom_schema" not in cls.__dict__:
            cls._genloom_schema = cls.GET_SCHEMA()
        return cls.__dict__["_genloom_schema"]

    FUNCTION = property(lambda cls: "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute)
                        else "EXECUTE_NORMALIZED")
    RETURN_TYPES = property(lambda cls: tuple(o.io_type for o in cls._schema().outputs))
    RETURN_NAMES = property(lambda cls: tuple(o.display_name or o.io_type for o in cls._schema().outputs))
    OUTPUT_IS_LIST = property(lambda cls: tuple(bool(o.is_output_list) for o in cls._schema().outputs))
    OUTPUT_TOOLTIPS = property(lambda cls: tuple(o.tooltip or "" for o in cls._schema().outputs))
    CATEGORY = property(lambda cls: cls._schema().category)
    DESCRIPTION = property(lambda cls: cls._schema().description)
    DISPLAY_NAME = property(lambda cls: cls._schema().display_name)
    OUTPUT_NODE = property(lambda cls: cls._schema().is_output_node)
    INPUT_IS_LIST = property(lambda cls: cls._schema().is_input_list)
    NOT_IDEMPOTENT = property(lambda cls: cls._schema().not_idempotent)
    DEPRECATED = property(lambda cls: cls._schema().is_deprecated)
    EXPERIMENTAL = property(lambda cls: cls._schema().is_experimental)
    API_NODE = property(lambda cls: cls._schema().is_api_node)

    def __getattr__(cls, name):
        # V1 hooks exist only when the node defines their V3 counterpart, as genloom's compiler
        # treats a present VALIDATE_INPUTS / IS_CHANGED / check_lazy_status as "the node has one".
        if name == "VALIDATE_INPUTS" and _overrides(cls, "validate_inputs"):
            return cls.validate_inputs
        if name == "IS_CHANGED" and _overrides(cls, "fingerprint_inputs"):
            return cls.fingerprint_inputs
        raise AttributeError(name)


def _overrides(cls, name: str) -> bool:
    return any(name in klass.__dict__ for klass in cls.__mro__ if klass not in (ComfyNode, object))


class ComfyNode(Node, metaclass=_NodeMeta):
    """The base of V3 nodes. Define `define_schema()` and `execute(cls, **inputs)`; optionally
    `validate_inputs`, `fingerprint_inputs` and `check_lazy_status` (classmethods).

    The registry takes a V3 class as a genloom Node: `schema()` is the V1 compilation of its
    INPUT_TYPES (engine/v1.py) with its DynamicCombo and Autogrow inputs as genloom's own dynamic
    inputs (engine/node.py), so /object_info shows them as ComfyUI does."""

    hidden: HiddenHolder = HiddenHolder()
    RELATIVE_PYTHON_MODULE = None
    keyed_by_mapping = True  # in NODE_CLASS_MAPPINGS, registered under the mapping's key (engine/registry.py)

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError(f"{cls.__name__} defines no define_schema()")

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError(f"{cls.__name__} defines no execute()")

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema().finalize()
        schema.validate()
        return schema

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        """Built from a fresh define_schema(), as ComfyUI does (options may list files); dynamic
        inputs flat, as prompts name them."""
        return cls.GET_SCHEMA().input_types()

    @classmethod
    def schema(cls):
        cached = cls.__dict__.get("_genloom_node_schema")
        if cached is None:
            v3 = cls._schema()
            cached = compile_v1(v3.node_id, cls, v3.display_name, cls.__module__)
            cached.inputs = _dynamic_inputs(v3, cached.inputs)
            cls._genloom_node_schema = cached
        return cached

    def __init_subclass__(cls, **kwargs):
        """A node's own check_lazy_status sees what execute sees: no hidden values among the inputs
        (they are in cls.hidden), DynamicCombo inputs regrouped."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("check_lazy_status")
        if own is None:
            return
        user = own.__func__ if isinstance(own, classmethod) else own

        def check_lazy_status(klass, **inputs):
            clone, inputs = klass._prepare(dict(inputs))
            return user(clone, **inputs)

        cls.check_lazy_status = classmethod(check_lazy_status)

    @classmethod
    def _prepare(cls, kwargs: dict):
        schema = cls._schema()
        hidden = {}
        for h in schema.hidden:
            member = Hidden(h)
            hidden[member.name] = kwargs.pop(member.name, None)
        for item in schema.inputs:
            if isinstance(item, (DynamicCombo.Input, Autogrow.Input)):
                item.regroup(kwargs)
        clone = type(cls.__name__, (cls,), {"hidden": HiddenHolder(hidden), "__module__": cls.__module__,
                                            "_genloom_schema": schema})
        return clone, kwargs

    @classmethod
    def _v1_result(cls, result):
        if result is None:
            result = NodeOutput()
        elif isinstance(result, tuple):
            result = NodeOutput(*result)
        elif isinstance(result, dict):
            result = NodeOutput.from_dict(result)
        elif isinstance(result, Blocker):
            result = NodeOutput(block_execution=result.message)
        elif not isinstance(result, NodeOutput):
            raise TypeError(f"{cls.__name__}.execute returned {type(result).__name__}; expected io.NodeOutput")
        if result.expand is not None and not cls._schema().enable_expand:
            raise TypeError(f"{cls.__name__} returned an expansion but its Schema does not set enable_expand=True")
        if result.block_execution is not None:
            return {"result": (Blocker(result.block_execution),) * len(cls._schema().outputs)}
        ui = result.ui.as_dict() if hasattr(result.ui, "as_dict") else result.ui
        if isinstance(ui, dict):  # ComfyUI's UI values are tuples or lists; JSON makes both lists
            ui = {k: list(v) if isinstance(v, tuple) else v for k, v in ui.items()}
        out = {"result": tuple(result.args)}
        if ui is not None:
            out["ui"] = ui
        if result.expand is not None:
            out["expand"] = result.expand
        return out

    @classmethod
    def EXECUTE_NORMALIZED(cls, **kwargs):
        clone, kwargs = cls._prepare(dict(kwargs))
        return cls._v1_result(clone.execute(**kwargs))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, **kwargs):
        clone, kwargs = cls._prepare(dict(kwargs))
        return cls._v1_result(await clone.execute(**kwargs))


def _dynamic_inputs(v3: Schema, flat: list) -> list:
    """The compiled flat inputs with each DynamicCombo and Autogrow of the schema made genloom's
    dynamic input of that kind (the same flat names, grouped, and ComfyUI's /object_info entry)."""
    from dataclasses import replace

    by_name = {spec.name: spec for spec in flat}
    out = []
    for item in v3.inputs:
        if isinstance(item, DynamicCombo.Input):
            options = {}
            for option in item.options:
                specs = []
                for inner in option.inputs:
                    for leaf in inner.flat():
                        spec = by_name[f"{item.id}.{leaf.id}"]
                        section = "optional" if leaf.optional else "required"
                        specs.append(replace(spec, name=leaf.id, section=section, extra=dict(spec.extra)))
                options[option.key] = specs
            out += engine_node.DynamicCombo(item.id, options, tooltip=item.tooltip or "", optional=item.optional)
        elif isinstance(item, Autogrow.Input):
            template, first = item.template, by_name[f"{item.id}.{item.template.names[0]}"]
            spec = replace(first, name=template.input.id, extra=dict(first.extra),
                           section="optional" if template.input.optional or item.optional else "required")
            prefix = getattr(template, "prefix", None)
            names = None if prefix is not None else template.names
            out += engine_node.Autogrow(item.id, spec, prefix=prefix, names=names, min=template.min,
                                        max=getattr(template, "max", len(template.names)),
                                        tooltip=item.tooltip or "")
        else:
            out += [by_name[leaf.id] for leaf in item.flat()]
    # required before optional, as INPUT_TYPES lists them (the editor lays widgets out that way)
    out.sort(key=lambda spec: spec.section != "required")
    return out + [spec for spec in flat if spec.section == "hidden"]


class ComfyExtension:
    """What a V3 pack's `comfy_entrypoint()` returns: `get_node_list()` lists its node classes."""

    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list[type[ComfyNode]]:
        return []
