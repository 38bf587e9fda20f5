"""folder_paths, comfy.utils.ProgressBar, comfy.model_management and PromptServer (routes, send_sync)."""

import os

import comfy.model_management
import comfy.utils
import folder_paths
from aiohttp import web
from server import PromptServer

routes = PromptServer.instance.routes
CALLS = []


@routes.get("/services_pack/hello")
async def hello(request):
    return web.json_response({"hello": request.query.get("name", "world"),
                              "checkpoints": folder_paths.get_filename_list("checkpoints")})


@routes.post("/services_pack/echo")
async def echo(request):
    return web.json_response({"echo": await request.json()})


def remember(json_data):
    CALLS.append(sorted(json_data))
    return json_data


PromptServer.instance.add_on_prompt_handler(remember)


class ServicesCount:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                             "steps": ("INT", {"default": 3, "min": 1, "max": 100}),
                             "prefix": ("STRING", {"default": "services/count"})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("path", "steps")
    FUNCTION = "count"
    CATEGORY = "tests/compat"
    OUTPUT_NODE = True

    def count(self, ckpt_name, steps, prefix, unique_id=None):
        full = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory())
        filename = f"{name}_{counter:05}_.txt"
        with open(os.path.join(folder, filename), "w") as fh:
            fh.write(f"{os.path.basename(full)} {steps} {comfy.model_management.get_torch_device().type}")
        PromptServer.instance.send_progress_text(f"counted {steps}", unique_id)
        PromptServer.instance.send_sync("services_pack.counted",
                                        {"node": unique_id, "steps": steps, "file": filename,
                                         "running": PromptServer.instance.last_node_id})
        return {"ui": {"text": [filename]}, "result": (os.path.join(subfolder, filename), steps)}


NODE_CLASS_MAPPINGS = {"ServicesCount": ServicesCount}
NODE_DISPLAY_NAME_MAPPINGS = {"ServicesCount": "Services: count"}


async def direct(request):
    return web.Response(text="added to the app's router at import")


PromptServer.instance.app.router.add_get("/services_pack/direct", direct)
