"""Sampling with ComfyUI's sampler and scheduler names, in sigma space (docs/sampling.md).

schedulers.py  the name tables (plain data, no torch)
k_samplers.py  every sampler name (k_*.py hold the algorithms)
noise.py       seeded noise, noise masks
guidance.py    conditioning prepared for the UNet and classifier-free guidance
preview.py     latent previews without the VAE
loop.py        `sample()`: KSampler's sigmas, then sigma_loop.sample_sigmas
"""
