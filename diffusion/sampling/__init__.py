"""Sampling on diffusers schedulers with ComfyUI's sampler and scheduler names.

schedulers.py  the name tables (plain data, no torch) and building a scheduler for a name pair
plan.py        which scheduler entries a run covers and the noise level of each boundary
noise.py       seeded noise, noise masks, clean-latent predictions
guidance.py    conditioning prepared for the UNet and classifier-free guidance
preview.py     latent previews without the VAE
loop.py        `sample()`: the denoising loop
"""
