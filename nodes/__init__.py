"""Built-in node packs: thin declarative classes that parse their inputs and call the library in
genloom.diffusion. Each module is imported without importing torch: heavy imports live inside the
functions that need them, so `genloom validate` and `genloom nodes` stay fast."""

PACKS = [
    "genloom.nodes.primitives",
    "genloom.nodes.text",
    "genloom.nodes.text_generation",
    "genloom.nodes.logic",
    "genloom.nodes.loaders",
    "genloom.nodes.conditioning",
    "genloom.nodes.ksampler",
    "genloom.nodes.custom_sampling",
    "genloom.nodes.model_sampling",
    "genloom.nodes.guiders",
    "genloom.nodes.sigma_nodes",
    "genloom.nodes.latent",
    "genloom.nodes.image",
    "genloom.nodes.image_edit",
    "genloom.nodes.image_compose",
    "genloom.nodes.image_resize",
    "genloom.nodes.image_save",
    "genloom.nodes.video",
    "genloom.nodes.upscale",
    "genloom.nodes.style_transfer",
    "genloom.nodes.masks",
    "genloom.nodes.latent_ops",
]
