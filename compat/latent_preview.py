"""ComfyUI's `latent_preview` for node packs: previewers of latents and the sampling callback that
reports progress with a preview picture (genloom's latent-to-RGB preview, no VAE)."""

from __future__ import annotations

from genloom.engine import context

MAX_PREVIEW_RESOLUTION = 512


class LatentPreviewer:
    def decode_latent_to_preview(self, x0):
        from genloom.diffusion.sampling.preview import latent_preview

        return latent_preview(x0, MAX_PREVIEW_RESOLUTION)

    def decode_latent_to_preview_image(self, preview_format, x0):
        return (preview_format, self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


def get_previewer(device=None, latent_format=None) -> LatentPreviewer:
    return LatentPreviewer()


def prepare_callback(model, steps, x0_output_dict=None):
    """callback(step, x0, x, total_steps): progress (and a preview) for the running node."""
    previewer = get_previewer()

    def callback(step, x0, x, total_steps):
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        image = previewer.decode_latent_to_preview(x0) if x0 is not None else None
        context.current().progress(step + 1, total_steps, preview=image)

    return callback
