from comfy_api.latest import io, ui

CHECKS = []


class V3Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Scale", display_name="V3: scale", category="tests/v3",
            description="Multiplies a number; shows the result as text.",
            inputs=[io.Float.Input("value", default=1.5, min=-10.0, max=10.0),
                    io.Int.Input("factor", default=2, min=1, max=8, display_mode=io.NumberDisplay.slider)],
            outputs=[io.Float.Output(display_name="scaled")],
            hidden=[io.Hidden.unique_id], is_output_node=True)

    @classmethod
    def validate_inputs(cls, factor):
        CHECKS.append(factor)
        return True if factor != 7 else "factor 7 is unlucky"

    @classmethod
    def fingerprint_inputs(cls, value, factor):
        return f"{value}x{factor}"

    @classmethod
    def execute(cls, value, factor):
        scaled = value * factor
        return io.NodeOutput(scaled, ui=ui.PreviewText(f"{cls.hidden.unique_id}:{scaled}"))


class V3Switch(io.ComfyNode):
    """Lazy: only the chosen branch is computed."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Switch", category="tests/v3",
            inputs=[io.Boolean.Input("first", default=True),
                    io.Float.Input("a", lazy=True, force_input=True, optional=True),
                    io.Float.Input("b", lazy=True, force_input=True, optional=True)],
            outputs=[io.Float.Output()], hidden=[io.Hidden.unique_id])

    @classmethod
    def check_lazy_status(cls, first, a=None, b=None):
        assert cls.hidden.unique_id is not None  # hidden values reach cls.hidden, not the arguments
        wanted = "a" if first else "b"
        return [wanted] if (a if first else b) is None else []

    @classmethod
    def execute(cls, first, a=None, b=None):
        return io.NodeOutput(a if first else b)


class V3Pick(io.ComfyNode):
    """DynamicCombo: each mode brings its own inputs; MatchType passes any value through."""

    @classmethod
    def define_schema(cls):
        template = io.MatchType.Template("T")
        return io.Schema(
            node_id="V3Pick", category="tests/v3",
            inputs=[io.DynamicCombo.Input("mode", options=[
                        io.DynamicCombo.Option("add", [io.Int.Input("amount", default=1)]),
                        io.DynamicCombo.Option("repeat", [io.String.Input("text", default="ab"),
                                                          io.Int.Input("times", default=2)])]),
                    io.MatchType.Input("thing", template=template, optional=True)],
            outputs=[io.String.Output(), io.MatchType.Output(template)])

    @classmethod
    def execute(cls, mode, thing=None):
        if mode["mode"] == "add":
            text = str(10 + mode["amount"])
        else:
            text = mode["text"] * mode["times"]
        return io.NodeOutput(text, thing)


class V3Preview(io.ComfyNode):
    """An async output node: previews an image batch and says how big it is."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Preview", category="tests/v3", is_output_node=True,
                         inputs=[io.Image.Input("images")], outputs=[io.String.Output()])

    @classmethod
    async def execute(cls, images):
        size = "x".join(str(n) for n in images.shape)
        return io.NodeOutput(size, ui=ui.PreviewImage(images))
