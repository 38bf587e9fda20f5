"""Checks an API-format graph against the registry before anything runs, with ComfyUI's error shapes.

Only the nodes that feed an output are checked, so a broken side branch does not stop the rest: the
returned graph holds just what the valid outputs need, in dependency order. Everything is iterative
(no recursion limit on long chains) and the common path allocates little, because this runs on every
execution.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

from .graph import Link, parse_input
from .schema import InputSpec, NodeSchema, types_match


@dataclass(slots=True)
class ValidNode:
    id: str
    class_type: str
    schema: NodeSchema
    inputs: dict[str, Any]  # name -> Link or coerced constant
    title: str | None = None


@dataclass
class Validation:
    graph: dict[str, ValidNode]  # the nodes the valid outputs need, dependencies first
    outputs: list[str]  # the valid output node ids
    node_errors: dict = field(default_factory=dict)
    error: dict | None = None

    @property
    def ok(self) -> bool:
        """True when something can run; `node_errors` may still name failed branches."""
        return self.error is None


def _err(type_: str, message: str, details: str = "", **extra_info) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def _input_error(type_: str, message: str, spec: InputSpec, details: str, **extra) -> dict:
    return _err(type_, message, details, input_name=spec.name, input_config=spec.export(), **extra)


_MISSING = object()
_CONTAINERS = (list, tuple, dict)
_EXACT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _coerce(kind: str, value: Any) -> Any:
    if kind == "INT":
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, (list, dict)):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return int(value)
    if kind == "FLOAT":
        if isinstance(value, (list, dict)):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return float(value)
    if kind == "STRING":
        if isinstance(value, (list, dict)):
            raise TypeError(f"expected text, got {type(value).__name__}")
        return value if isinstance(value, str) else str(value)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise ValueError(f"expected true or false, got {value!r}")
    return value


class NodeCheck:
    """The per-node part of validation: parses and checks one node's inputs against its schema."""

    __slots__ = ("schemas", "combo_cache")

    def __init__(self, schemas: dict[str, NodeSchema]):
        self.schemas = schemas  # node id -> schema, for every node of the graph
        self.combo_cache: dict[int, Any] = {}

    def combo(self, spec: InputSpec):
        key = id(spec)
        options = self.combo_cache.get(key)
        if options is None:
            listed = spec.combo_options()
            try:
                options = (set(listed), listed)
            except TypeError:  # unhashable options: fall back to list membership
                options = (listed, listed)
            self.combo_cache[key] = options
        return options

    def check(self, node_id: str, node: dict, schema: NodeSchema) -> tuple[ValidNode, list[dict], list[str]]:
        raw = node.get("inputs") or {}
        inputs: dict[str, Any] = {}
        errors: list[dict] = []
        deps: list[str] = []
        received_types: dict[str, str] = {}
        custom = schema.validate
        takes_over = schema.validate_params if custom is not None else frozenset()
        all_custom = "*" in takes_over
        own_link_types = schema.validate_wants_input_types
        schemas = self.schemas
        for spec in schema.inputs:
            name = spec.name
            if spec.section == "hidden":
                continue
            value = raw.get(name, _MISSING)
            if value is _MISSING or value is None:
                if spec.section == "required":
                    errors.append(_err("required_input_missing", "Required input is missing", name,
                                       input_name=name))
                continue
            if type(value) in _CONTAINERS:  # scalars are constants as they are
                value = parse_input(value)
            if isinstance(value, Link):
                source_schema = schemas.get(value.node)
                if source_schema is None:
                    errors.append(_input_error(
                        "bad_linked_input", "Bad linked input, the source node is not in the workflow", spec,
                        f"{name}: linked to node {value.node!r}, which does not exist", received_value=list(value)))
                    continue
                if not 0 <= value.slot < len(source_schema.outputs):
                    errors.append(_input_error(
                        "bad_linked_input", "Bad linked input, the source node has no such output", spec,
                        f"{name}: node {value.node!r} ({source_schema.name}) has no output {value.slot}",
                        received_value=list(value)))
                    continue
                received = source_schema.outputs[value.slot].type
                if own_link_types:
                    received_types[name] = received
                elif not types_match(received, spec.type):
                    errors.append(_input_error(
                        "return_type_mismatch", "Return type mismatch between linked nodes", spec,
                        f"{name}, received_type({received}) mismatch input_type({spec.type})",
                        received_type=received, linked_node=list(value)))
                    continue
                inputs[name] = value
                deps.append(value.node)
                continue
            if isinstance(value, list) and raw[name] is value:
                errors.append(_input_error(
                    "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    spec, f"{name}: {value!r}", received_value=value))
                continue
            kind = spec.type
            exact = _EXACT.get(kind)
            if exact is not None and type(value) is not exact:
                try:
                    value = _coerce(kind, value)
                except Exception as exc:  # noqa: BLE001 - any conversion failure is the user's input
                    errors.append(_input_error(
                        "invalid_input_type", f"Failed to convert an input value to a {kind} value", spec,
                        f"{name}, {value!r}, {exc}", received_value=value, exception_message=str(exc)))
                    continue
            if kind == "FLOAT" and not math.isfinite(value):  # NaN would run and poison every later JSON
                errors.append(_input_error(
                    "invalid_input_type", "Failed to convert an input value to a FLOAT value", spec,
                    f"{name}, {value!r}, a FLOAT input must be a finite number", received_value=None,
                    exception_message=f"{value!r} is not a finite number"))
                continue
            if not all_custom and name not in takes_over:
                if kind == "INT" or kind == "FLOAT":
                    if spec.min is not None and value < spec.min:
                        errors.append(_input_error(
                            "value_smaller_than_min", f"Value {value} smaller than min of {spec.min}", spec,
                            name, received_value=value))
                        continue
                    if spec.max is not None and value > spec.max:
                        errors.append(_input_error(
                            "value_bigger_than_max", f"Value {value} bigger than max of {spec.max}", spec,
                            name, received_value=value))
                        continue
                elif kind == "COMBO":
                    try:
                        lookup, listed = self.combo(spec)
                        present = value in lookup
                    except TypeError:  # an unhashable value is never an option
                        present, listed = False, self.combo(spec)[1]
                    if not present:
                        shown = listed if len(listed) <= 20 else listed[:20] + ["..."]
                        errors.append(_input_error(
                            "value_not_in_list", "Value not in list", spec, f"{name}: {value!r} not in {shown}",
                            received_value=value))
                        continue
                    if spec.check is not None:
                        problem = _deeper_check(spec, value)
                        if problem:
                            errors.append(_input_error(
                                "custom_validation_failed", "Custom validation failed for node", spec,
                                f"{name}: {problem}", received_value=value))
                            continue
            inputs[name] = value
        if schema.extra_info and schema.extra_info.get("any_input"):
            self._undeclared(raw, schema, inputs, errors, deps)
        if custom is not None:
            error = self._custom(schema, inputs, raw, received_types)
            if error is not None:
                errors.append(error)
        title = (node.get("_meta") or {}).get("title")
        return ValidNode(node_id, schema.name, schema, inputs, title), errors, deps

    def _undeclared(self, raw: dict, schema: NodeSchema, inputs: dict, errors: list, deps: list) -> None:
        """Inputs a V1 node never declared but whose INPUT_TYPES claims every name (ComfyUI passes
        them on): links to existing outputs and constants, as they are."""
        for name, value in raw.items():
            if name in schema.by_name or value is None:
                continue
            value = parse_input(value) if type(value) in _CONTAINERS else value
            if isinstance(value, Link):
                source = self.schemas.get(value.node)
                if source is None or not 0 <= value.slot < len(source.outputs):
                    errors.append(_err("bad_linked_input", "Bad linked input, the source node or output does "
                                       "not exist", f"{name}: {list(value)}", input_name=name))
                    continue
                deps.append(value.node)
            inputs[name] = value

    @staticmethod
    def _custom(schema: NodeSchema, inputs: dict, raw: dict, received_types: dict) -> dict | None:
        wanted = schema.validate_params
        every = "*" in wanted
        args = {}
        for spec in schema.inputs:
            name = spec.name
            if spec.section == "hidden" or not (every or name in wanted) or name not in raw:
                continue
            value = inputs[name] if name in inputs else parse_input(raw[name])
            args[name] = None if isinstance(value, Link) else value
        if schema.validate_wants_input_types:
            args["input_types"] = received_types
        try:
            result = schema.validate(**args)
        except Exception as exc:  # noqa: BLE001 - a node's own validation code
            return _err("exception_during_validation", "Exception when validating node", str(exc),
                        exception_type=type(exc).__name__,
                        traceback=traceback.format_exception(exc))
        if result is True:
            return None
        details = ", ".join(args) if args else schema.name
        if result is not False and result is not None:
            details = f"{details} - {result}"
        return _err("custom_validation_failed", "Custom validation failed for node", details,
                    input_name=", ".join(args))


def _deeper_check(spec: InputSpec, value) -> str | None:
    try:
        return spec.check(value)
    except Exception as exc:  # noqa: BLE001 - a node's own check: report, never crash validation
        return f"{type(exc).__name__}: {exc}"


def _schemas(graph: dict, registry) -> tuple[dict[str, NodeSchema], dict | None]:
    """Each node's schema, or the top-level error for the first node that has none."""
    known = getattr(registry, "nodes", None)
    lookup = known.get if isinstance(known, dict) else registry.get
    schemas = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return schemas, _err("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'", node_id=str(node_id))
        class_type = node["class_type"]
        schema = lookup(class_type) if isinstance(class_type, str) else None
        if schema is None:
            title = (node.get("_meta") or {}).get("title") or class_type
            return schemas, _err("missing_node_type",
                        f"Node '{title}' not found. The custom node may not be installed.",
                        f"Node ID '#{node_id}'", node_id=str(node_id), class_type=class_type,
                        node_title=title)
        if not isinstance(node.get("inputs", {}), dict):
            return schemas, _err("invalid_prompt", "A node's inputs must be an object of name -> value.",
                        f"Node ID '#{node_id}'", node_id=str(node_id))
        schemas[node_id] = schema
    return schemas, None


def validate(graph: dict, registry, outputs: list[str] | None = None) -> Validation:
    """Validate an API-format graph. `outputs` restricts the run to those nodes (partial execution)."""
    if not isinstance(graph, dict):
        return Validation({}, [], {}, _err("invalid_prompt", "The workflow must be an object of node id -> node."))
    graph = {str(k): v for k, v in graph.items()} if any(not isinstance(k, str) for k in graph) else graph
    schemas, problem = _schemas(graph, registry)
    if problem is not None:
        return Validation({}, [], {}, problem)

    if outputs is None:
        targets = [nid for nid, schema in schemas.items() if schema.output_node]
    else:
        targets = [str(o) for o in outputs]
        unknown = [o for o in targets if o not in graph]
        if unknown:
            return Validation({}, [], {}, _err(
                "invalid_prompt", "Requested output nodes are not in the workflow", ", ".join(unknown),
                node_ids=unknown))
    if not targets:
        return Validation({}, [], {}, _err("prompt_no_outputs", "Prompt has no outputs",
                                           "The workflow has no output node (e.g. Save Image)."))

    checker = NodeCheck(schemas)
    checked: dict[str, tuple[ValidNode, list[dict], list[str]]] = {}
    valid: dict[str, bool] = {}  # finished nodes -> whole upstream valid
    order: list[str] = []  # finished nodes, dependencies first
    on_stack: dict[str, int] = {}  # node -> position in `path`
    path: list[str] = []
    marked: set[str] = set()  # nodes where a cycle was reported

    for target in targets:
        if target in valid:
            continue
        # Iterative depth-first post-order walk; stack items are (node, next dependency index).
        stack: list[list] = [[target, 0]]
        while stack:
            frame = stack[-1]
            node_id = frame[0]
            entry = checked.get(node_id)
            if entry is None:
                node = graph[node_id]
                schema = schemas[node_id]
                try:
                    entry = checker.check(node_id, node, schema)
                except Exception as exc:  # noqa: BLE001 - e.g. a COMBO listing that raises
                    entry = (ValidNode(node_id, schema.name, schema, {}), [_err(
                        "exception_during_validation", "Exception when validating node", str(exc),
                        exception_type=type(exc).__name__, traceback=traceback.format_exception(exc))], [])
                checked[node_id] = entry
                on_stack[node_id] = len(path)
                path.append(node_id)
            deps = entry[2]
            i = frame[1]
            pushed = False
            while i < len(deps):
                dep = deps[i]
                i += 1
                if dep in valid:
                    continue
                if dep in on_stack:
                    _mark_cycle(path, on_stack[dep], checked, marked)
                    continue
                frame[1] = i
                stack.append([dep, 0])
                pushed = True
                break
            if pushed:
                continue
            stack.pop()
            path.pop()
            del on_stack[node_id]
            ok = not entry[1]
            if ok:
                for dep in deps:
                    if not valid.get(dep, False):
                        ok = False
                        break
            valid[node_id] = ok
            order.append(node_id)

    good = [t for t in targets if valid[t]]
    bad = [t for t in targets if not valid[t]]
    node_errors: dict[str, dict] = {}
    if bad:
        node_errors = _node_errors(bad, order, checked, graph)
        needed = _upstream(good, checked)
        result = {nid: checked[nid][0] for nid in order if nid in needed}
    else:
        result = {nid: checked[nid][0] for nid in order}

    error = None
    if not good:
        lines = []
        for node_id, record in node_errors.items():
            for e in record["errors"]:
                lines.append(f"{node_id} ({record['class_type']}): {e['message']}: {e['details']}")
        error = _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))
    return Validation(result, good, node_errors, error)


CYCLE_SHOWN = 12  # nodes of a cycle named in its error; a longer one is shown by its ends


def _mark_cycle(path: list[str], start: int, checked: dict, marked: set) -> None:
    """One error for the cycle that closes at path[start]: on that node, with its path capped, so a
    long cycle costs what its length does (never a copy of the path per node)."""
    node_id = path[start]
    if node_id in marked:
        return
    marked.add(node_id)
    length = len(path) - start
    if length <= CYCLE_SHOWN:
        shown = path[start:] + [node_id]
    else:
        half = CYCLE_SHOWN // 2
        shown = path[start:start + half] + ["..."] + path[len(path) - half + 1:] + [node_id]
    text = " -> ".join(shown)
    checked[node_id][1].append(_err("dependency_cycle", f"Dependency cycle detected ({length} nodes): {text}",
                                    text, cycle=shown, cycle_length=length))


def _node_errors(bad: list[str], order: list[str], checked: dict, graph: dict) -> dict:
    """ComfyUI's node_errors: each failing node with the failed outputs that depend on it. Walks
    from whichever side is smaller, the failed outputs up or the failing nodes down, so the cost is
    the graph's size times min(failed outputs, failing nodes): linear for one output or one error."""
    failing = [nid for nid in order if checked[nid][1]]
    reached: dict[str, list[str]] = {nid: [] for nid in failing}
    if len(bad) <= len(failing):
        for target in bad:  # in target order, so each list is too
            for node_id in _upstream([target], checked):
                if node_id in reached:
                    reached[node_id].append(target)
    else:
        dependents: dict[str, list[str]] = {}
        for node_id in order:
            for dep in checked[node_id][2]:
                dependents.setdefault(dep, []).append(node_id)
        rank = {t: i for i, t in enumerate(bad)}
        for node_id in failing:
            seen, todo = {node_id}, [node_id]
            while todo:
                for nxt in dependents.get(todo.pop(), ()):
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            reached[node_id] = sorted((t for t in seen if t in rank), key=rank.__getitem__)
    return {nid: {"errors": checked[nid][1], "dependent_outputs": reached[nid],
                  "class_type": graph[nid]["class_type"]} for nid in failing}


def _upstream(targets: list[str], checked: dict) -> set[str]:
    """Every node the targets depend on (themselves included), among those that were checked."""
    seen = set(targets)
    todo = list(targets)
    while todo:
        for dep in checked[todo.pop()][2]:
            if dep not in seen and dep in checked:
                seen.add(dep)
                todo.append(dep)
    return seen
