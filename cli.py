"""The `genloom` command: run, validate and list nodes from a terminal, or start the server.

Only argparse and the standard library are imported up front: `--help`, `validate` and `nodes` must
never pull in torch, so engine and node imports happen inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine.budgets import add_limit_arguments, limit_options
from .runtime import thread_count

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command-line value that cannot be applied (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genloom", description="Node-based workflow engine for generative AI.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p, models=True):
        p.add_argument("--plugins-dir", type=Path, action="append", default=[],
                       help="folder of node packs to load (repeatable)")
        if models:
            p.add_argument("--models-dir", type=Path, action="append", default=[],
                           help="model folder, searched before the shipped models (repeatable)")
            p.add_argument("--input-dir", type=Path, help="folder of input files (default ./input)")

    run = sub.add_parser("run", help="run a workflow and write its outputs",
                         description="Run a workflow (API, genloom envelope, UI JSON, or a PNG made by "
                                     "SaveImage) and print where its outputs were written.")
    run.add_argument("workflow", help="workflow file (.json or .png)")
    common(run)
    run.add_argument("--output-dir", type=Path, help="where output images go (default ./output)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                     help="override an input; VALUE is read as JSON when it parses, else as text "
                          "(repeatable). The saved editor layout is dropped when the graph is changed.")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--cache", default="default", help="cache policy (default: 'default')")
    run.add_argument("--threads", type=thread_count, help="CPU threads for torch (default: half the cores, at "
                     "most 8; or GENLOOM_THREADS / OMP_NUM_THREADS)")
    run.add_argument("--output", dest="outputs", action="extend", nargs="+", metavar="NODE_ID",
                     help="run only what these nodes need (partial execution)")
    add_limit_arguments(run)
    run.add_argument("--traceback", action="store_true", help="print the full traceback of a failing node")
    run.add_argument("--sweep", action="append", default=[], metavar="NODE_ID.INPUT=V1,V2,...",
                     help="run once per value (repeatable: the cartesian product of all sweeps)")
    run.add_argument("--inputs", type=Path, metavar="DIR", help="run once per file of DIR (with --bind)")
    run.add_argument("--bind", metavar="NODE_ID.INPUT", help="the input that takes each --inputs file's name")
    run.add_argument("--ray", metavar="local|ADDRESS", help="spread the runs over Ray workers (genloom[ray])")
    run.add_argument("--workers", type=thread_count, default=1, help="Ray workers (default 1)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray worker takes")
    run.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker takes")
    run.add_argument("--ship-code", choices=("auto", "always", "never"), default="auto",
                     help="send genloom's code to the Ray workers (auto: when --ray is an address, not 'local')")
    run.set_defaults(handler=cmd_run)

    val = sub.add_parser("validate", help="check a workflow without running it",
                         description="Check a workflow against the installed nodes; exit 0 when valid.")
    val.add_argument("workflow", help="workflow file (.json or .png)")
    common(val)
    val.add_argument("--output", dest="outputs", action="extend", nargs="+", metavar="NODE_ID",
                     help="check only what these nodes need")
    add_limit_arguments(val)
    val.set_defaults(handler=cmd_validate)

    nodes = sub.add_parser("nodes", help="list the installed node types",
                           description="List node types; --json prints the /object_info export.")
    common(nodes)
    nodes.add_argument("--json", action="store_true", help="print ComfyUI's /object_info JSON")
    nodes.set_defaults(handler=cmd_nodes)

    graph = sub.add_parser("graph", help="print a workflow's structure, critical path or DOT",
                           description="Show how a workflow hangs together: nodes, links, the longest "
                                       "dependency chain, what could run in parallel; --dot for Graphviz.")
    graph.add_argument("workflow", help="workflow file (.json or .png)")
    common(graph, models=False)
    graph.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of the summary")
    graph.add_argument("--json", action="store_true", help="print the summary as JSON")
    graph.set_defaults(handler=cmd_graph)

    plugins = sub.add_parser("plugins", help="check ComfyUI node packs before using them",
                             description="Work with plugin folders of node packs.")
    plugin_sub = plugins.add_subparsers(dest="plugins_command", metavar="ACTION", required=True)
    check = plugin_sub.add_parser("check", help="load each pack of a folder and say what it needs",
                                  description="Import every pack of DIR as genloom loads it and print, per "
                                              "pack, its nodes or why it failed, with the requirement that "
                                              "provides a missing module and what to pip install. genloom "
                                              "never installs anything; exit 1 when a pack failed.")
    check.add_argument("folder", type=Path, metavar="DIR", help="a plugins folder (like ComfyUI's custom_nodes)")
    check.set_defaults(handler=cmd_plugins_check)

    sub.add_parser("serve", help="serve ComfyUI's API and web editor (genloom serve --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .server.app import main as serve

        return serve(argv[1:]) or EXIT_OK
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"genloom {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("genloom: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- shared helpers -------------------------------------------------------------------------------

def _folders(args):
    from .engine.folders import Folders, default_models_dirs

    folders = Folders(models_dirs=[*args.models_dir, *default_models_dirs()])
    if args.input_dir is not None:
        folders.input_dir = args.input_dir
    return folders


def _registry(args):
    from .runtime import build_registry

    registry = build_registry(args.plugins_dir or ())
    _report_plugin_problems(registry.problems)
    return registry


def _report_plugin_problems(problems) -> None:
    for problem in problems:
        where = problem["source"] + (f" / {problem['node']}" if problem.get("node") else "")
        first = str(problem["message"]).strip().splitlines()[0] if problem.get("message") else ""
        if problem.get("requirement"):
            first += f" (the pack requires {problem['requirement']!r}; see genloom plugins check)"
        print(f"warning: node pack {where}: {first}", file=sys.stderr)


def _load(path: str, registry):
    from .engine.workflow import WorkflowFormatError, load_workflow

    try:
        return load_workflow(path, registry)
    except WorkflowFormatError as exc:
        raise UsageError(str(exc)) from None


def format_errors(error: dict | None, node_errors: dict, graph: dict | None = None) -> list[str]:
    """Structured validation errors as lines a person can act on: node, class, input, message."""
    lines = []
    if error:
        lines.append(f"error: {error.get('message', '')}" + _detail_suffix(error, with_details=not node_errors))
    for node_id, record in (node_errors or {}).items():
        title = (((graph or {}).get(node_id) or {}).get("_meta") or {}).get("title")
        label = f"node {node_id}" + (f" '{title}'" if title and title != record.get("class_type") else "")
        label += f" ({record.get('class_type')})"
        for err in record.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            where = f"{label} input '{name}'" if name else label
            lines.append(f"  {where}: {err.get('message', '')}{_detail_suffix(err)} [{err.get('type')}]")
    return lines


def _detail_suffix(err: dict, with_details: bool = True) -> str:
    details = str(err.get("details") or "").strip()
    if not with_details or not details:
        return ""
    return f" ({details})" if "\n" not in details else ":\n    " + details.replace("\n", "\n    ")


def _apply_overrides(workflow, overrides: list[str], registry) -> None:
    for item in overrides:
        target, eq, raw = item.partition("=")
        node_id, dot, name = target.rpartition(".")
        if not eq or not dot or not node_id or not name:
            raise UsageError(f"--set expects NODE_ID.INPUT=VALUE, got {item!r}")
        node = workflow.graph.get(node_id)
        if not isinstance(node, dict):
            raise UsageError(f"--set {item!r}: node {node_id!r} is not in the workflow")
        schema = registry.get(node.get("class_type"))
        spec = schema.by_name.get(name) if schema is not None else None
        if schema is not None and (spec is None or spec.section == "hidden"):
            known = ", ".join(s.name for s in schema.inputs if s.section != "hidden")
            raise UsageError(f"--set {item!r}: node {node_id} ({schema.name}) has no input {name!r}; "
                             f"its inputs are: {known}")
        node.setdefault("inputs", {})[name] = _parse_value(raw, spec.type if spec is not None else None)
    if overrides:
        workflow.layout = None  # it would no longer describe the graph that runs


def _parse_value(raw: str, kind: str | None):
    from .engine.graph import is_link_value

    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if kind in ("STRING", "COMBO") and not isinstance(value, str):
        return raw  # "true" or "1.5" typed for a text input mean the text
    if isinstance(value, list) and not is_link_value(value):
        return {"__value__": value}
    return value


# --- commands -------------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    from .engine import context
    from .engine.validate import validate

    registry = _registry(args)
    workflow = _load(args.workflow, registry)
    token = context.use(context.RunContext(device_choice="cpu", folders=_folders(args), options=limit_options(args)))
    try:
        result = validate(workflow.graph, registry, args.outputs)
    finally:
        context.reset(token)
    for line in format_errors(result.error, result.node_errors, workflow.graph):
        print(line, file=sys.stderr)
    if not result.ok or result.node_errors:
        return EXIT_FAILED
    outputs = ", ".join(f"{o} ({result.graph[o].class_type})" for o in result.outputs)
    print(f"valid: {len(result.graph)} nodes to run for outputs {outputs}")
    return EXIT_OK


def cmd_graph(args) -> int:
    from .engine.analysis import structure, to_dot, workflow_digraph

    workflow = _load(args.workflow, _registry(args))
    g = workflow_digraph(workflow.graph)
    if args.dot:
        sys.stdout.write(to_dot(g, Path(args.workflow).stem))
        return EXIT_OK
    info = structure(g)
    if args.json:
        json.dump(info.as_dict(), sys.stdout, indent=1)
        print()
        return EXIT_OK if info.cycle is None else EXIT_FAILED

    def label(node_id: str) -> str:
        return f"{node_id} ({g.nodes[node_id]['class_type']})"

    print(f"{info.nodes} nodes, {info.links} links, {info.components} independent part(s)")
    print(f"sources: {', '.join(label(n) for n in info.sources) or '-'}")
    print(f"sinks:   {', '.join(label(n) for n in info.sinks) or '-'}")
    if info.cycle is not None:
        print(f"dependency cycle: {' -> '.join(info.cycle + info.cycle[:1])}", file=sys.stderr)
        return EXIT_FAILED
    print(f"critical path ({len(info.critical_path)} nodes): {' -> '.join(label(n) for n in info.critical_path)}")
    print(f"parallel width: {info.width} (at most that many nodes could run at once)")
    for depth, level in enumerate(info.levels):
        print(f"  level {depth}: {', '.join(label(n) for n in level)}")
    return EXIT_OK


def cmd_nodes(args) -> int:
    from .engine import context

    registry = _registry(args)
    token = context.use(context.RunContext(device_choice="cpu", folders=_folders(args)))
    try:
        info = registry.object_info()
    finally:
        context.reset(token)
    if args.json:
        json.dump(info, sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    by_category: dict[str, list] = {}
    for name, entry in info.items():
        by_category.setdefault(entry["category"] or "(none)", []).append((name, entry))
    for category in sorted(by_category):
        print(f"{category}:")
        for name, entry in sorted(by_category[category]):
            ins = [n for section in ("required", "optional") for n in entry["input_order"].get(section, [])]
            outs = ", ".join(entry["output"]) or ("(output node)" if entry["output_node"] else "-")
            shown = f"{name}" + (f" [{entry['display_name']}]" if entry["display_name"] != name else "")
            print(f"  {shown}: {', '.join(ins) or '-'} -> {outs}")
    print(f"{len(info)} node types")
    return EXIT_OK




def cmd_plugins_check(args) -> int:
    from .runtime import build_registry

    if not args.folder.is_dir():
        raise UsageError(f"{args.folder} is not a folder")
    registry = build_registry([args.folder], entry_points_too=False)
    to_install: list[str] = []
    failed = 0
    for name, pack in registry.packs.items():
        error = pack["error"]
        if error is None:
            web = f", web extension {pack['web_dir']}" if pack["web_dir"] else ""
            print(f"ok      {name}: {pack['nodes']} node(s){web}")
            continue
        failed += 1
        print(f"FAILED  {name}: {error['message'].strip().splitlines()[0]}")
        module = error.get("missing_module")
        if module and error.get("requirement"):
            print(f"        missing module {module!r}: the pack requires {error['requirement']!r} "
                  f"({error['requirements_file']})")
            to_install.append(error["requirement"])
        elif module:
            print(f"        missing module {module!r}: no requirement of the pack names it")
    for problem in registry.problems:
        if problem.get("node"):
            print(f"warning {problem['source']} / {problem['node']}: {str(problem['message']).strip()}")
    print(f"{len(registry.packs) - failed} of {len(registry.packs)} pack(s) loaded")
    if to_install:
        print("to install what is missing (genloom installs nothing itself):")
        print("  pip install " + " ".join(f"'{r}'" if any(c in r for c in "<>=!~; ") else r
                                          for r in dict.fromkeys(to_install)))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_run(args) -> int:
    import genloom
    from .runtime import Engine, set_threads

    set_threads(args.threads)
    engine = Engine(registry=_registry(args), cache=args.cache, device=args.device,
                    models_dirs=args.models_dir or None, input_dir=args.inputs or args.input_dir,
                    output_dir=args.output_dir)
    engine.options.update(limit_options(args))
    workflow = _load(args.workflow, engine.registry)
    _apply_overrides(workflow, args.overrides, engine.registry)
    if args.sweep or args.inputs or args.ray:
        return _run_many(args, engine, workflow)

    checked = engine.validate(workflow, args.outputs)
    if checked.node_errors and checked.ok:
        print("warning: some outputs are invalid and will not run:", file=sys.stderr)
        for line in format_errors(None, checked.node_errors, workflow.graph):
            print(line, file=sys.stderr)
    # Like ComfyUI, saved images carry the editor layout when there is one.
    extra = {"extra_pnginfo": {"workflow": workflow.layout}} if workflow.layout else None
    progress = _Progress(total=len(checked.graph), graph=workflow.graph)
    try:
        result = engine.run(workflow, outputs=args.outputs, on_event=progress.on_event, extra_data=extra)
    except genloom.WorkflowError as exc:
        progress.close()
        for line in format_errors(exc.error, exc.node_errors, workflow.graph):
            print(line, file=sys.stderr)
        return EXIT_FAILED
    except genloom.ExecutionError as exc:
        progress.close()
        _print_execution_error(exc.payload, args.traceback)
        return EXIT_FAILED
    except (genloom.Interrupted, KeyboardInterrupt):
        progress.close()
        print("genloom run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress.close()
    _print_outputs(result.outputs, engine)
    for payload in result.errors:  # nodes stopped by an error value (Blocker) upstream
        _print_execution_error(payload, args.traceback)
    print(f"done: {len(result.executed)} nodes executed, {len(result.cached)} from cache", file=sys.stderr)
    return EXIT_FAILED if result.errors else EXIT_OK


def _run_many(args, engine, workflow) -> int:
    """--sweep / --inputs (and --ray): one run per combination, one progress bar."""
    import copy
    import importlib.util

    from tqdm import tqdm

    from .cluster import sweep

    try:
        axes = [sweep.parse_sweep(s) for s in args.sweep]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (args.inputs is None) != (args.bind is None):
        raise UsageError("--inputs DIR and --bind NODE_ID.INPUT go together")
    if args.ray and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray: pip install 'genloom[ray]'")
    if args.inputs is not None:
        axes.append((args.bind, sweep.folder_files(args.inputs)))
    runs = []
    for overrides in sweep.combinations(axes):
        variant = copy.deepcopy(workflow)
        _apply_overrides(variant, overrides, engine.registry)
        runs.append((" ".join(overrides) or "run", variant.graph))
    extra = {"extra_pnginfo": {"workflow": workflow.layout}} if workflow.layout else None
    with tqdm(total=len(runs), desc="runs", unit="run") as bar:
        if args.ray:
            from .cluster.workers import ClusterConfig

            cluster = ClusterConfig(address=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                    cpus_per_worker=args.cpus_per_worker, plugins_dirs=args.plugins_dir,
                                    models_dirs=args.models_dir or None, cache=args.cache, device=args.device,
                                    ship_code=args.ship_code, options=dict(engine.options))
            outcomes = sweep.run_ray(cluster, runs, _output_dirs(engine), extra, bar)
        else:
            outcomes = sweep.run_local(engine, runs, extra, bar)
    failed = 0
    for outcome in outcomes:
        print(f"[{outcome.label}]")
        _print_outputs(outcome.outputs, engine)
        if outcome.error:
            failed += 1
            _print_execution_error(outcome.error, args.traceback)
    print(f"done: {len(outcomes) - failed} of {len(outcomes)} runs succeeded", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _print_execution_error(payload: dict, full_traceback: bool) -> None:
    node = payload.get("node_id")
    print(f"error: node {node} ({payload.get('node_type')}) failed: "
          f"{payload.get('exception_type')}: {payload.get('exception_message')}", file=sys.stderr)
    tb = payload.get("traceback") or []
    if isinstance(tb, str):
        tb = [tb]
    if tb:
        shown = tb if full_traceback else tb[-2:]
        print("".join(shown).rstrip(), file=sys.stderr)
        if not full_traceback:
            print("(--traceback shows the whole traceback)", file=sys.stderr)


def _output_dirs(engine) -> dict[str, Path]:
    folders = engine.folders
    return {"output": Path(folders.output_dir), "temp": Path(folders.temp_dir), "input": Path(folders.input_dir)}


def _print_outputs(outputs: dict, engine) -> None:
    dirs = _output_dirs(engine)
    for node_id, ui in (outputs or {}).items():
        for key, items in (ui or {}).items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    base = dirs.get(item.get("type", "output"), dirs["output"])
                    print(f"wrote {base / (item.get('subfolder') or '') / item['filename']}  (node {node_id})")
                elif key not in ("images",):
                    print(f"node {node_id} {key}: {item}")


class _Progress:
    """Two tqdm bars: nodes of the graph, and the steps of the node that is running."""

    def __init__(self, total: int, graph: dict):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.graph = graph
        self.nodes = tqdm(total=total, desc="nodes", unit="node", position=0, leave=True)
        self.steps = None
        self.steps_node = None
        self.current = None

    def _finish_current(self):
        if self.current is not None:
            if self.nodes.n >= self.nodes.total:
                self.nodes.total = self.nodes.n + 1
            self.nodes.update(1)
            self.current = None
        if self.steps is not None:
            self.steps.close()
            self.steps = self.steps_node = None

    def on_event(self, event: str, data: dict) -> None:
        if event == "execution_cached":
            self.nodes.update(min(len(data.get("nodes") or []), self.nodes.total - self.nodes.n))
        elif event == "executing":
            self._finish_current()
            node = data.get("node")
            if node is not None:
                self.current = node
                class_type = (self.graph.get(node) or {}).get("class_type", "")
                self.nodes.set_description(f"node {node} {class_type}".strip())
        elif event == "progress":
            node, total = data.get("node"), data.get("max") or 0
            if self.steps is None or self.steps_node != node:
                if self.steps is not None:
                    self.steps.close()
                self.steps = self._tqdm(total=total, desc=f"  {node}", unit="step", position=1, leave=False)
                self.steps_node = node
            self.steps.total = total
            self.steps.update((data.get("value") or 0) - self.steps.n)  # throttled redraws
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            self._finish_current()

    def close(self):
        if self.steps is not None:
            self.steps.close()
            self.steps = None
        self.nodes.close()


if __name__ == "__main__":
    sys.exit(main())
