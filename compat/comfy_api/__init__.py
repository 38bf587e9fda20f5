"""ComfyUI's `comfy_api` package; `comfy_api.latest` holds the V3 node API."""
