"""Models: weight files (weights.py), LDM key maps (keymaps.py), single-file checkpoints
(single_file.py), building models from configs (loading.py), the MODEL/CLIP/VAE handles (handles.py),
LoRA (lora.py), prompt encoding (encoding.py), textual inversion files (embeddings.py), the memory
manager (memory.py) and the owner of every piece of model state of one engine (owner.py)."""
