"""A V3-only pack: comfy_entrypoint returns the extension; its nodes use the io API."""

from comfy_api.latest import ComfyExtension

from .nodes import V3Pick, V3Preview, V3Scale, V3Switch


class V3PackExtension(ComfyExtension):
    async def get_node_list(self):
        return [V3Scale, V3Switch, V3Pick, V3Preview]


async def comfy_entrypoint() -> ComfyExtension:
    return V3PackExtension()
