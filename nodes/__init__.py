"""Built-in node packs: thin declarative classes that parse their inputs and call the library in
genloom.diffusion. Each module is imported without importing torch: heavy imports live inside the
functions that need them, so `genloom validate` and `genloom nodes` stay fast."""

PACKS = [
    "genloom.nodes.primitives",
    "genloom.nodes.loaders",
    "genloom.nodes.conditioning",
    "genloom.nodes.ksampler",
    "genloom.nodes.latent",
    "genloom.nodes.image",
    "genloom.nodes.upscale",
    "genloom.nodes.style_transfer",
]
