"""ComfyUI's `comfy.cli_args`: `args` with the settings packs read, as genloom runs them."""

from __future__ import annotations

import enum
from types import SimpleNamespace


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"


args = SimpleNamespace(
    listen="127.0.0.1", port=8188, cpu=False, preview_method=LatentPreviewMethod.Latent2RGB,
    preview_size=512, disable_smart_memory=False, lowvram=False, novram=False, highvram=False,
    gpu_only=False, normalvram=False, force_fp16=False, force_fp32=False, fp16_vae=False, bf16_vae=False,
    fp32_vae=False, bf16_unet=False, fp16_unet=False, fp8_e4m3fn_unet=False, fp8_e5m2_unet=False,
    use_split_cross_attention=False, use_quad_cross_attention=False, use_pytorch_cross_attention=True,
    disable_xformers=True, dont_upcast_attention=False, disable_metadata=False, disable_all_custom_nodes=False,
    multi_user=False, verbose="INFO", output_directory=None, input_directory=None, temp_directory=None,
    user_directory=None, base_directory=None, extra_model_paths_config=None, disable_cuda_malloc=True,
    deterministic=False, fast=set(), enable_cors_header=None, max_upload_size=100, cuda_device=None,
    directml=None, reserve_vram=None, async_offload=False, dont_print_server=False, quick_test_for_ci=False,
    windows_standalone_build=False, auto_launch=False, disable_auto_launch=True, front_end_version=None,
    front_end_root=None, whitelist_custom_nodes=[], disable_api_nodes=True, cache_lru=0, cache_classic=True,
    cache_none=False, default_hashing_function="sha256", database_url=None, enable_manager=False,
)
