"""The diffusion library: what node packs call to load, run and budget models.

It knows nothing of node packs, the server or the CLI; it may import `genloom.engine` (the run
context, errors, folders, sizes) and third-party libraries only. Importing any of its modules is
cheap: torch, diffusers, transformers and spandrel are imported by the functions that need them.

  models/     weight files and key maps, building models, handles, LoRA, prompt encoding, the
              memory manager and the per-engine ModelOwner that holds all model state
  sampling/   samplers and schedules on diffusers schedulers, the denoising loop, previews
  styling/    style and colour transfer networks
  configs/    shipped model configs and the CLIP vocabulary (data, no weights)
  errors.py   the library's errors for users
  images.py   picture files in and out, outpaint padding
  resample.py resizing pictures and latents
  tiling.py   running an image model tile by tile
  upscale_models.py  super-resolution models: loading and padded, tiled upscaling
  vae_passes.py      tiled VAE decoding and inpaint encoding
"""
