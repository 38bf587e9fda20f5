"""Built-in node packs. Each module is imported without importing torch: heavy imports live inside
the functions that need them, so `genloom validate` and `genloom nodes` stay fast."""

PACKS = [
    "genloom.nodes.primitives",
]
