"""Shared by the compat model tests: the tiny SD1 bundle, a tolerance rule and diffusers' attention
fed a zero query source (the independent side of the attention-patch checks)."""

import pytest


@pytest.fixture(scope="module")
def sd1(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")


def close(a, b, rel=1e-5) -> bool:
    """Equal up to float rounding, relative to the values' size (the tiny models' reach ~100)."""
    return float((a - b).abs().max()) <= rel * float(b.abs().max())


class ZeroQuery:
    """diffusers' own attention processor, fed zeros as the query's source."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return self.inner(attn, hidden_states * 0, encoder_hidden_states, attention_mask, temb)
