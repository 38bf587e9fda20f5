"""Model loading, text encoding, LoRA and GPU memory for the generation nodes (a library, not a pack).

handles.py documents the MODEL/CLIP/VAE objects other packs receive. Importing this package is
cheap; torch, diffusers and transformers are imported by the functions that need them.
"""
