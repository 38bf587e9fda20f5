"""AlignYourStepsScheduler, GITSScheduler, OptimalStepsScheduler and ExtendIntermediateSigmas:
their /object_info entries against ComfyUI's declarations (comfy_extras/nodes_align_your_steps.py,
nodes_gits.py, nodes_optimalsteps.py, nodes_custom_sampler.py) and their sigmas against the
published tables and interpolation arithmetic written out here."""

import math

import pytest

torch = pytest.importorskip("torch")

from comfy_facts import check_entry  # noqa: E402

from genloom.engine.errors import NodeInputError  # noqa: E402
from genloom.nodes import sigma_nodes as sn  # noqa: E402

_DENOISE = ("denoise", "FLOAT", 1.0, 0.0, 1.0, 0.01)
_CAT = "sampling/custom_sampling"
FACTS = {
    "AlignYourStepsScheduler": {
        "category": _CAT + "/schedulers", "display": "AlignYourStepsScheduler", "output": ["SIGMAS"],
        "required": [("model_type", ["SD1", "SDXL", "SVD"]), ("steps", "INT", 10, 1, 10000), _DENOISE]},
    "GITSScheduler": {
        "category": _CAT + "/schedulers", "display": "GITSScheduler", "output": ["SIGMAS"],
        "required": [("coeff", "FLOAT", 1.20, 0.80, 1.50, 0.05), ("steps", "INT", 10, 2, 1000), _DENOISE]},
    "OptimalStepsScheduler": {
        "category": _CAT + "/schedulers", "display": "OptimalStepsScheduler", "output": ["SIGMAS"],
        "required": [("model_type", ["FLUX", "Wan", "Chroma"]), ("steps", "INT", 20, 3, 1000), _DENOISE]},
    "ExtendIntermediateSigmas": {
        "category": _CAT + "/sigmas", "display": "ExtendIntermediateSigmas", "output": ["SIGMAS"],
        "required": [("sigmas", "SIGMAS"), ("steps", "INT", 2, 1, 100),
                     ("start_at_sigma", "FLOAT", -1.0, -1.0, 20000.0, 0.01),
                     ("end_at_sigma", "FLOAT", 12.0, 0.0, 20000.0, 0.01),
                     ("spacing", ["linear", "cosine", "sine"])]},
}

AYS_SD1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
           0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]
FLUX = [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001]


def _close(sigmas, expected):
    assert sigmas.dtype == torch.float32 and sigmas.shape == (len(expected),)
    assert torch.allclose(sigmas, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0), sigmas


def test_signatures_match_comfyui():
    for cls in sn.NODES:
        check_entry(cls.schema().object_info(), FACTS[cls.__name__])


def test_align_your_steps_table_and_log_linear_interpolation():
    (ten,) = sn.AlignYourStepsScheduler().run("SD1", 10, 1.0)
    _close(ten, AYS_SD1[:-1] + [0.0])  # the published 10-step table, its last level replaced by 0
    (five,) = sn.AlignYourStepsScheduler().run("SD1", 5, 1.0)
    _close(five, AYS_SD1[:-1:2] + [0.0])  # 6 levels land on every second table entry
    (four,) = sn.AlignYourStepsScheduler().run("SD1", 4, 1.0)
    # level k sits at table position 2.5 k: log sigma interpolated halfway between two entries
    _close(four, [AYS_SD1[0], math.sqrt(AYS_SD1[2] * AYS_SD1[3]), AYS_SD1[5],
                  math.sqrt(AYS_SD1[7] * AYS_SD1[8]), 0.0])
    (half,) = sn.AlignYourStepsScheduler().run("SD1", 10, 0.5)  # the last round(10 * 0.5) steps
    _close(half, AYS_SD1[5:-1] + [0.0])
    (svd,) = sn.AlignYourStepsScheduler().run("SVD", 10, 1.0)
    assert float(svd[0]) == 700.0 and float(svd[1]) == 54.5
    (sdxl,) = sn.AlignYourStepsScheduler().run("SDXL", 10, 1.0)
    assert math.isclose(float(sdxl[3]), 2.1811480769, rel_tol=1e-7)
    (none,) = sn.AlignYourStepsScheduler().run("SD1", 10, 0.0)
    assert none.numel() == 0


def test_gits_rows_interpolation_and_coefficients():
    (ten,) = sn.GITSScheduler().run(1.20, 10, 1.0)
    _close(ten, [14.61464119, 5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048, 0.50118381,
                 0.32104823, 0.19894916, 0.09824532, 0.0])
    (two,) = sn.GITSScheduler().run(0.80, 2, 1.0)
    _close(two, [14.61464119, 7.49001646, 0.0])
    (half,) = sn.GITSScheduler().run(1.20, 10, 0.5)
    _close(half, [0.74807048, 0.50118381, 0.32104823, 0.19894916, 0.09824532, 0.0])
    (many,) = sn.GITSScheduler().run(0.80, 25, 1.0)  # the 20-step row (21 levels) spread to 26
    first_row = [14.61464119, 13.76078796, 12.96784878, 12.2308979, 11.54541874]
    assert len(many) == 26 and many[-1] == 0
    assert math.isclose(float(many[1]), math.exp(0.2 * math.log(first_row[0]) + 0.8 * math.log(first_row[1])),
                        rel_tol=1e-6)  # level 1 at table position 0.8
    assert math.isclose(float(many[5]), first_row[4], rel_tol=1e-6)  # level 5 at position 4
    with pytest.raises(NodeInputError, match="coeff"):
        sn.GITSScheduler().run(0.83, 10, 1.0)


def test_gits_table_lies_on_the_sd1_grid():
    """A transcription check: every GITS level is the SD1 noise level at one of 101 evenly spaced
    timesteps (log-interpolated), to 1e-4 relative; neighbouring grid levels are ~5% apart."""
    from genloom.diffusion.sampling.sigma_tables import GITS

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    cumprod = torch.cumprod(1 - betas, 0)
    log_table = (((1 - cumprod) / cumprod) ** 0.5).log()
    pos = torch.linspace(0, 999, 101, dtype=torch.float64)
    low = pos.floor().long()
    grid = (log_table[low] + (pos - low) * (log_table[(low + 1).clamp(max=999)] - log_table[low])).exp()
    assert sorted(GITS) == [round(0.80 + 0.05 * i, 2) for i in range(15)]
    for coeff, rows in GITS.items():
        assert len(rows) == 19
        for steps, row in enumerate(rows, start=2):
            assert len(row) == steps + 1 and all(a > b for a, b in zip(row, row[1:])), (coeff, steps)
            for level in row:
                assert float(((grid - level).abs() / level).min()) < 1e-4, (coeff, steps, level)


def test_optimal_steps_tables():
    (flux,) = sn.OptimalStepsScheduler().run("FLUX", 10, 1.0)
    _close(flux, FLUX[:-1] + [0.0])
    (five,) = sn.OptimalStepsScheduler().run("FLUX", 5, 1.0)
    _close(five, FLUX[:-1:2] + [0.0])
    (wan,) = sn.OptimalStepsScheduler().run("Wan", 20, 1.0)
    assert len(wan) == 21 and float(wan[0]) == 1.0 and math.isclose(float(wan[18]), 0.539, rel_tol=1e-6)
    (chroma,) = sn.OptimalStepsScheduler().run("Chroma", 40, 0.25)  # the last 10 steps
    assert len(chroma) == 11 and math.isclose(float(chroma[0]), 0.232, rel_tol=1e-6) and chroma[-1] == 0


def test_extend_intermediate_sigmas():
    sig = torch.tensor([14.0, 10.0, 5.0, 0.0])
    (lin,) = sn.ExtendIntermediateSigmas().run(sig, 2, -1.0, 6.0, "linear")
    _close(lin, [14.0, 12.0, 10.0, 7.5, 5.0, 0.0])  # 5 is below end_at_sigma: its step stays whole
    (cos,) = sn.ExtendIntermediateSigmas().run(sig, 3, 12.0, 0.0, "cosine")  # 14 is above start
    s30, s60 = math.sin(math.pi / 6), math.sin(math.pi / 3)
    _close(cos, [14.0, 10.0, 10 - 5 * s30, 10 - 5 * s60, 5.0, 5 - 5 * s30, 5 - 5 * s60, 0.0])
    (sine,) = sn.ExtendIntermediateSigmas().run(sig[:2], 3, -1.0, 0.0, "sine")
    _close(sine, [14.0, 14 - 4 * (1 - math.cos(math.pi / 6)), 14 - 4 * (1 - math.cos(math.pi / 3)), 10.0])
    (same,) = sn.ExtendIntermediateSigmas().run(sig, 1, -1.0, 0.0, "linear")
    _close(same, sig.tolist())
