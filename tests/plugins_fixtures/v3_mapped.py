"""A V3 class placed straight in NODE_CLASS_MAPPINGS (no comfy_entrypoint), in a single-file pack."""

from comfy_api.latest import io


class V3Mapped(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Mapped", display_name="V3 mapped", category="tests/v3",
                         inputs=[io.String.Input("text", default="hi")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(text.upper())


NODE_CLASS_MAPPINGS = {"V3Mapped": V3Mapped}
