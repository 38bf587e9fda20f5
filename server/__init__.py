"""The HTTP/websocket server: ComfyUI's API and web editor over a genloom Engine (`genloom serve`)."""
