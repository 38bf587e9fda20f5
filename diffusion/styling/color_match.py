"""ComfyUI's ColorTransfer: match a batch's colours to reference images, frame by frame or with one
transform for the whole batch (so a video keeps its frame-to-frame differences).

Methods: Reinhard (per-channel mean and standard deviation in Lab), MKL (the Monge-Kantorovich linear
map between the Lab colour covariances, Pitie and Kokaram 2007), and per-channel RGB histogram
matching through 256-bin cumulative histograms. Written from the published methods; statistics are
population statistics, as ComfyUI computes them.
"""

from __future__ import annotations

from .color import lab_to_srgb, srgb_to_lab

METHODS = ["reinhard_lab", "mkl_lab", "histogram"]
SOURCE_STATS = ["per_frame", "uniform", "target_frame"]
_EPS = 1e-6
_BINS = 256


def _lab(frame):
    """[H, W, 3] -> [3, H*W] Lab."""
    return srgb_to_lab(frame[..., :3].double()).reshape(-1, 3).T


def _stats(frames_flat, mkl: bool):
    """Pooled mean [3, 1] and std [3, 1] (Reinhard) or covariance [3, 3] (MKL) of a list of [3, N]:
    the mean of the frame means, and the average of each frame's spread around that mean."""
    mean = sum(f.mean(dim=1, keepdim=True) for f in frames_flat) / len(frames_flat)
    if mkl:
        spread = sum((f - mean) @ (f - mean).T / f.shape[1] for f in frames_flat) / len(frames_flat)
        return mean, spread
    var = sum(((f - mean) ** 2).mean(dim=1, keepdim=True) for f in frames_flat) / len(frames_flat)
    return mean, var.sqrt().clamp_min(_EPS)


def _sqrt_psd(matrix):
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clamped at 0)."""
    import torch

    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def mkl_matrix(cov_source, cov_ref):
    """The linear map T with T cov_source T^T = cov_ref that moves colours least:
    T = Cs^-1/2 (Cs^1/2 Cr Cs^1/2)^1/2 Cs^-1/2."""
    import torch

    values, vectors = torch.linalg.eigh(cov_source)
    root = values.clamp_min(0).sqrt().clamp_min(_EPS)
    half = (vectors * root) @ vectors.T
    inv_half = (vectors / root) @ vectors.T
    return inv_half @ _sqrt_psd(half @ cov_ref @ half) @ inv_half


def _affine(source_flat, ref_stats, mkl: bool):
    """(scale-or-matrix, offset) taking the source statistics to the reference's."""
    s_mean, s_spread = _stats(source_flat, mkl)
    r_mean, r_spread = ref_stats
    if mkl:
        t = mkl_matrix(s_spread, r_spread)
        return (lambda x: t @ x), r_mean - t @ s_mean
    scale = r_spread / s_spread
    return (lambda x: x * scale), r_mean - scale * s_mean


def _cdf(frames):
    """Per-channel cumulative histogram [3, 256] of RGB frames [H, W, 3] in 0..1, pooled."""
    import torch

    hist = torch.zeros(3, _BINS, dtype=torch.float64)
    for frame in frames:
        bins = (frame[..., :3].double().reshape(-1, 3).T * (_BINS - 1)).long().clamp(0, _BINS - 1)
        hist.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.float64))
    cdf = hist.cumsum(1)
    return cdf / cdf[:, -1:]


def _lut(source_cdf, ref_cdf):
    """For each source bin, the first reference bin whose cumulative share reaches the source's."""
    import torch

    return torch.searchsorted(ref_cdf.contiguous(), source_cdf.contiguous()).clamp_max(_BINS - 1).double() / (_BINS - 1)


def color_transfer(target, ref, method: str, source_stats: str = "per_frame", target_index: int = 0,
                   strength: float = 1.0):
    """IMAGE [B, H, W, C] with the colours of `ref` (IMAGE [R, ...]); reference frame i serves frame i
    (the last one serves the rest); a single reference is pooled. strength 0 (or no ref) returns the
    target unchanged; strength > 1 extrapolates."""
    import torch

    if ref is None or strength == 0:
        return target
    if method not in METHODS or source_stats not in SOURCE_STATS:
        raise ValueError(f"unknown method {method!r} or source_stats {source_stats!r}")
    frames, refs = len(target), len(ref)
    index = min(max(int(target_index), 0), frames - 1)
    out = torch.empty(target.shape[:3] + (3,), dtype=torch.float32)
    if method == "histogram":
        shared_lut = None
        if source_stats != "per_frame":
            pool = [target[index]] if source_stats == "target_frame" else list(target)
            shared_lut = _lut(_cdf(pool), _cdf(list(ref)))
        for i in range(frames):
            src = target[i][..., :3].double()
            lut = shared_lut if shared_lut is not None else _lut(_cdf([target[i]]), _cdf([ref[min(i, refs - 1)]]))
            bins = (src.reshape(-1, 3).T * (_BINS - 1)).long().clamp(0, _BINS - 1)
            matched = lut.gather(1, bins).T.reshape(src.shape)
            out[i] = torch.lerp(src, matched, float(strength)).clamp(0, 1).float()
        return out
    mkl = method == "mkl_lab"
    ref_flat = [_lab(r) for r in ref]
    pooled_ref = _stats(ref_flat, mkl)
    shared = None
    if source_stats != "per_frame":
        pool = [_lab(target[index])] if source_stats == "target_frame" else [_lab(t) for t in target]
        shared = _affine(pool, pooled_ref, mkl)
    for i in range(frames):
        src = _lab(target[i])
        if shared is not None:
            apply, offset = shared
        else:
            ref_stats = pooled_ref if refs == 1 else _stats([ref_flat[min(i, refs - 1)]], mkl)
            apply, offset = _affine([src], ref_stats, mkl)
        corrected = apply(src) + offset
        mixed = torch.lerp(src, corrected, float(strength))
        out[i] = lab_to_srgb(mixed.T.reshape(target.shape[1], target.shape[2], 3)).clamp(0, 1).float()
    return out
