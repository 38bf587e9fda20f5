"""A pack serving a folder of its own with `PromptServer.instance.routes.static(prefix, folder)`."""

import os

from server import PromptServer

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
PromptServer.instance.routes.static("/static_pack/files", FILES)

NODE_CLASS_MAPPINGS = {}
