"""Built-in node packs. Each module is imported without importing torch: heavy imports live inside
the functions that need them, so `genloom validate` and `genloom nodes` stay fast."""

PACKS = [
    "genloom.nodes.primitives",
    "genloom.nodes.loaders",
    "genloom.nodes.conditioning",
    "genloom.nodes.sampling",
    "genloom.nodes.latent",
    "genloom.nodes.image",
    "genloom.nodes.upscale",
    "genloom.nodes.style",
]
