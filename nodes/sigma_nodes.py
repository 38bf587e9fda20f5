"""ComfyUI's table schedulers (AlignYourStepsScheduler, GITSScheduler, OptimalStepsScheduler) and
ExtendIntermediateSigmas. Each makes a SIGMAS (1-D float32 tensor, descending, ending in 0); the
tables and arithmetic are genloom.diffusion.sampling.sigma_schedules / sigma_tables, imported
inside `run`."""

from genloom.engine.node import Combo, Float, Input, Int, Node, Out

_CAT = "sampling/custom_sampling"
_DENOISE = Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)


def _schedules():
    from genloom.diffusion.sampling import sigma_schedules

    return sigma_schedules


class AlignYourStepsScheduler(Node):
    """NVIDIA's Align Your Steps noise levels for SD1, SDXL or SVD, log-linearly interpolated to
    the step count; with denoise < 1 only the last round(steps * denoise) steps."""

    category = _CAT + "/schedulers"
    display_name = "AlignYourStepsScheduler"
    inputs = [Combo("model_type", ["SD1", "SDXL", "SVD"]), Int("steps", 10, min=1, max=10000), _DENOISE]
    outputs = [Out("SIGMAS")]

    def run(self, model_type, steps, denoise):
        return (_schedules().align_your_steps(model_type, steps, denoise),)


class GITSScheduler(Node):
    """GITS' noise levels for SD1-type models at a coefficient (0.80 .. 1.50 by 0.05); more than 20
    steps interpolate the 20-step row."""

    category = _CAT + "/schedulers"
    display_name = "GITSScheduler"
    inputs = [Float("coeff", 1.20, min=0.80, max=1.50, step=0.05), Int("steps", 10, min=2, max=1000), _DENOISE]
    outputs = [Out("SIGMAS")]

    def run(self, coeff, steps, denoise):
        from genloom.engine.errors import NodeInputError

        if _schedules().gits_levels(coeff) is None:
            raise NodeInputError("coeff", f"GITS has tables for 0.80, 0.85, ... 1.50 only, not {coeff}")
        return (_schedules().gits(coeff, steps, denoise),)


class OptimalStepsScheduler(Node):
    """OptimalSteps' noise levels for FLUX, Wan or Chroma (flow models), interpolated to the step count."""

    category = _CAT + "/schedulers"
    display_name = "OptimalStepsScheduler"
    inputs = [Combo("model_type", ["FLUX", "Wan", "Chroma"]), Int("steps", 20, min=3, max=1000), _DENOISE]
    outputs = [Out("SIGMAS")]

    def run(self, model_type, steps, denoise):
        return (_schedules().optimal_steps(model_type, steps, denoise),)


class ExtendIntermediateSigmas(Node):
    """Splits every step whose sigma lies in [end_at_sigma, start_at_sigma] (start -1: no upper
    limit) into `steps` smaller ones, spaced linearly, by cosine or by sine."""

    category = _CAT + "/sigmas"
    display_name = "ExtendIntermediateSigmas"
    inputs = [Input("sigmas", "SIGMAS"), Int("steps", 2, min=1, max=100),
              Float("start_at_sigma", -1.0, min=-1.0, max=20000.0, step=0.01, round=False),
              Float("end_at_sigma", 12.0, min=0.0, max=20000.0, step=0.01, round=False),
              Combo("spacing", ["linear", "cosine", "sine"])]
    outputs = [Out("SIGMAS")]

    def run(self, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
        return (_schedules().extend_intermediate(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


NODES = [AlignYourStepsScheduler, GITSScheduler, OptimalStepsScheduler, ExtendIntermediateSigmas]
