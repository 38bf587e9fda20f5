"""A V3-only pack whose nodes declare dynamic inputs: io.DynamicCombo (each mode its own inputs) and
io.Autogrow (sockets by prefix, and by names); an output node writes what it is given."""

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io


class DynArith(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DynArith", category="tests/v3",
            inputs=[io.Int.Input("base", default=4, min=0, max=100),
                    io.DynamicCombo.Input("op", options=[
                        io.DynamicCombo.Option("add", [io.Int.Input("amount", default=1, min=0, max=10)]),
                        io.DynamicCombo.Option("affine", [io.Int.Input("factor", default=2, min=0, max=10),
                                                          io.Int.Input("offset", default=0, min=-10, max=10)]),
                        io.DynamicCombo.Option("square", [])],
                        tooltip="What to do with base.")],
            outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, base, op):
        kind = op["op"]
        if kind == "add":
            return io.NodeOutput(base + op["amount"])
        if kind == "affine":
            return io.NodeOutput(base * op["factor"] + op["offset"])
        return io.NodeOutput(base * base)


class GrowSum(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GrowSum", category="tests/v3",
            inputs=[io.Autogrow.Input("values", template=io.Autogrow.TemplatePrefix(
                        io.Int.Input("value"), prefix="value", min=1, max=4)),
                    io.Autogrow.Input("named", template=io.Autogrow.TemplateNames(
                        io.Int.Input("n", optional=True), names=["x", "y"], min=0))],
            outputs=[io.String.Output()])

    @classmethod
    def execute(cls, values, named):
        total = sum(values.values()) + sum(named.values())
        return io.NodeOutput(f"{'+'.join(sorted(values))}|{'+'.join(sorted(named))}={total}")


class WriteText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="WriteText", category="tests/v3", is_output_node=True,
                         inputs=[io.String.Input("text", force_input=True),
                                 io.String.Input("name", default="dyn")], outputs=[])

    @classmethod
    def execute(cls, text, name):
        folder = folder_paths.get_output_directory()
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.write(text)
        return io.NodeOutput(ui={"text": [text]})


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [DynArith, GrowSum, WriteText]


async def comfy_entrypoint():
    return Extension()
