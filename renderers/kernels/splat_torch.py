"""Pure-torch 3D Gaussian splatting: EWA projection and a tile-culled, depth-sorted compositor.

This is the readable reference that also runs on CPU; autograd provides the backward pass of the projection, the
compositor writes its own (below). It follows gsplat
1.5.3's forward math (shared/docs/renderers.md §1.2) so that the CPU and CUDA backends agree:

1. Σ = R S Sᵀ Rᵀ from a (w,x,y,z) quaternion (normalised here) and scales.
2. Camera space t = R_w μ + t_w (OpenCV axes); t_x/t_z and t_y/t_z are clamped to the frustum plus a 30 % margin
   before the Jacobian J = [[f_x/t_z, 0, -f_x t_x/t_z²], [0, f_y/t_z, -f_y t_y/t_z²]] is built; Σ₂ = J Σ_c Jᵀ.
3. Low-pass dilation Σ₂ += eps2d·I (0.3 px²), conic = Σ₂⁻¹ as (a, b, c), radii = ceil(k·√diag Σ₂) with the
   opacity-aware k = min(3.33, √(2 ln(255·o))) when opacities are given (plain 3.33 otherwise, as gsplat's torch
   reference does); depth outside [near, far], det ≤ 0 or a box entirely off-screen gives radii 0 (culled).
4. Compositing per 16×16 tile, front to back over the depth-sorted Gaussians whose box touches the tile:
   σ = ½(a dx² + c dy²) + b dx dy with d = μ₂ − p and pixel centres p = (j+0.5, i+0.5);
   α = min(0.999, o·exp(−σ)), skipped when σ < 0 or α < 1/255; a Gaussian whose T·(1−α) would fall to ≤ 1e-4
   ends the pixel and is not added (exactly gsplat's rule). Transmittance is an exclusive cumulative sum in log
   space, which never divides by zero. All tiles of all cameras are composited together in a few vectorised
   batches (no per-tile Python loop), and the backward pass is written out (3DGS's, ``_CompositePairs``) over the
   contributing pairs alone, as gsplat's is: on the demo's end-of-run scene (5k Gaussians, two 64 px views,
   ``bench/bench_gaussians.py --run``), projection + compositing + backward went from 115 to 90 ms at 2 threads
   (127 to 117 ms at one) against the per-tile loop under autograd.

Memory: each batch keeps one float64 [tile pixels, tile list] decision matrix (at most ``MAX_DENSE`` entries) while
it is composited, and the backward pass keeps a few numbers per contributing (pixel, Gaussian) pair, never a dense
[pixels, N] graph. ``checkpoint=True`` recomputes each batch in the backward pass instead, so only one batch's
pairs are alive at a time.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: fainter contributions are skipped
ALPHA_MAX = 0.999  # gsplat's clamp (INRIA uses 0.99)
T_MIN = 1e-4  # transmittance at which a pixel stops
RADIUS_K = 3.33  # max extent in standard deviations (√(2 ln 255))

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def quat_to_rotmat(quats: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 3 3"]:
    """Rotation matrices from (w,x,y,z) quaternions (normalised here, so any non-zero length works)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """World-space covariances Σ = (R S)(R S)ᵀ; ``scales`` are standard deviations (post-exp)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def eval_sh(degree: int, dirs: Float[Tensor, "*B 3"], coeffs: Float[Tensor, "*B K 3"]) -> Float[Tensor, "*B 3"]:
    """Σ_k c_k Y_k(d) over the real SH bands up to ``degree`` (INRIA / gsplat basis and sign convention).

    ``dirs`` need not be unit length. The +0.5 offset and clamp of the 3DGS colour are applied by the caller.
    """
    if (degree + 1) ** 2 > coeffs.shape[-2]:
        raise ValueError(f"SH degree {degree} needs {(degree + 1) ** 2} coefficients, got {coeffs.shape[-2]}")
    out = SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    x, y, z = (v[..., None] for v in F.normalize(dirs, dim=-1).unbind(-1))
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * coeffs[..., 4, :] + SH_C2[1] * yz * coeffs[..., 5, :]
           + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :] + SH_C2[3] * xz * coeffs[..., 7, :]
           + SH_C2[4] * (xx - yy) * coeffs[..., 8, :])
    if degree == 2:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :] + SH_C3[1] * xy * z * coeffs[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :] + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :])


@dataclass
class Projection:
    """Per (camera, Gaussian) screen-space quantities; radii == 0 marks a culled pair."""

    means2d: Tensor  # [C,N,2] pixel coordinates (x right, y down)
    conics: Tensor  # [C,N,3] (a, b, c) of the inverse 2D covariance
    depths: Tensor  # [C,N] camera-space z
    radii: Tensor  # [C,N,2] int32 box half-extents in pixels
    opacities: Tensor | None  # [C,N] opacity times the antialiasing compensation (None if not given)


def project(means: Float[Tensor, "N 3"], covars: Float[Tensor, "N 3 3"], viewmats: Float[Tensor, "C 4 4"],
            Ks: Float[Tensor, "C 3 3"], width: int, height: int, *, eps2d: float = 0.3, near: float = 0.01,
            far: float = 1e10, opacities: Float[Tensor, "N"] | None = None, antialiased: bool = False) -> Projection:
    """EWA-project world Gaussians into C pinhole cameras (OpenCV world-to-camera ``viewmats``, pixel ``Ks``)."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C,N,3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # [C,N,3,3]
    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the point used by the Jacobian to the frustum plus a margin (large off-screen splats stay bounded).
    mx, my = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx_c = tz * torch.clamp(tx / tz, min=-(cx / fx + mx), max=(width - cx) / fx + mx)
    ty_c = tz * torch.clamp(ty / tz, min=-(cy / fy + my), max=(height - cy) / fy + my)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * tx_c / tz ** 2, zero, fy / tz, -fy * ty_c / tz ** 2], -1)
    J = J.reshape(tz.shape + (2, 3))
    cov2d = J @ covars_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)

    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    det_raw = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    det = det_raw.clamp_min(1e-10)
    conics = torch.stack([cov2d[..., 1, 1] / det, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det,
                          cov2d[..., 0, 0] / det], -1)

    opac = None
    with torch.no_grad():
        k = torch.full_like(tz, RADIUS_K)
        valid = (det_raw > 0) & (tz > near) & (tz < far)
    if opacities is not None:
        opac = opacities[None, :].expand_as(tz)
        if antialiased:
            opac = opac * torch.sqrt((det_orig / det).clamp_min(0.0))
        with torch.no_grad():
            valid &= opac >= ALPHA_MIN
            k = torch.minimum(k, torch.sqrt(2.0 * torch.log((opac / ALPHA_MIN).clamp_min(1.0))))
    with torch.no_grad():
        radii = torch.stack([torch.ceil(k * cov2d[..., 0, 0].clamp_min(0).sqrt()),
                             torch.ceil(k * cov2d[..., 1, 1].clamp_min(0).sqrt())], -1)
        m = means2d.detach()
        valid &= (radii > 0).any(-1)
        valid &= ((m[..., 0] + radii[..., 0] > 0) & (m[..., 0] - radii[..., 0] < width)
                  & (m[..., 1] + radii[..., 1] > 0) & (m[..., 1] - radii[..., 1] < height))
        radii = torch.where(valid[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projection(means2d, conics, tz, radii, opac)


def _exclusive_segment_cumsum(values: Tensor, seg: Tensor, n_seg: int) -> Tensor:
    """Σ_{j<k, seg_j = seg_k} values_j for values [K] whose segment ids ``seg`` [K] are sorted (float64 sums)."""
    run = torch.cumsum(values.double(), 0)
    before = torch.cat([run.new_zeros(1), run])  # before[k] = Σ_{j<k} values_j
    first = torch.searchsorted(seg, torch.arange(n_seg, device=seg.device))  # each segment's first index (or K)
    return before[:-1] - before[first[seg]]


class _CompositePairs(torch.autograd.Function):
    """Front-to-back compositing of the contributing (pixel, Gaussian) pairs, with the analytic backward pass.

    Pairs k come grouped by pixel (``seg``) in depth order, with α_k and w_k = α_k T_k (T_k = Π_{j<k} (1 − α_j)
    over the pixel's earlier pairs) already found by the decision pass; the forward pass only sums
    C = Σ_k w_k f_k and A = 1 − Π_k (1 − α_k) into the pixels. The backward pass is 3DGS's (Kerbl et al. 2023,
    and gsplat's rasterize backward): with g_C, g_A the output gradients, c_k = w_k (g_C · f_k) and S_k the sum of
    c_j over the pixel's pairs behind k,

        ∂L/∂f_k = w_k g_C,   ∂L/∂α_k = T_k (g_C · f_k) − (S_k − g_A T_final) / (1 − α_k),

    then α = o e^{−σ} (zero gradient where α was clamped at 0.999), σ = ½(a dx² + c dy²) + b dx dy, dx = μx − px,
    gives ∂σ/∂μ = (a dx + b dy, b dx + c dy) and ∂σ/∂(a, b, c) = (½dx², dx dy, ½dy²). Per pair this is a handful of
    vector operations, where autograd kept every intermediate.
    """

    @staticmethod
    def forward(ctx, geo: Tensor, feat: Tensor, prow: Tensor, pix: Tensor, xy: Tensor, seg: Tensor, alpha: Tensor,
                weights: Tensor, free: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        f = feat.index_select(0, prow)
        # (weights expanded explicitly: a [K,1] broadcast takes twice as long on CPU)
        feats = feat.new_zeros(n_out, feat.shape[1]).index_add_(0, pix, f * weights[:, None].expand_as(f))
        log_t = feat.new_zeros(n_out).index_add_(0, pix, torch.log1p(-alpha))
        t_final = torch.exp(log_t)
        ctx.save_for_backward(geo, feat, prow, pix, xy, seg, alpha, weights, free, t_final)
        return feats, 1.0 - t_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_feats: Tensor, g_acc: Tensor):
        geo, feat, prow, pix, xy, seg, alpha, weights, free, t_final = ctx.saved_tensors
        g_c = g_feats.index_select(0, pix)  # [K,D]
        g_feat = torch.zeros_like(feat).index_add_(0, prow, g_c * weights[:, None].expand_as(g_c))
        dot = (g_c * feat.index_select(0, prow)).sum(-1)
        contrib = weights * dot
        n_seg = t_final.shape[0]
        total = contrib.new_zeros(n_seg, dtype=torch.float64).index_add_(0, seg, contrib.double())
        behind = (total.index_select(0, seg) - _exclusive_segment_cumsum(contrib, seg, n_seg)
                  - contrib.double()).to(alpha.dtype)
        g_alpha = (weights / alpha) * dot - (behind - g_acc.index_select(0, pix) * t_final.index_select(0, pix)) \
            / (1.0 - alpha)
        g_alpha = g_alpha * free
        g_sigma = -alpha * g_alpha
        rows = geo.index_select(0, prow)
        dx, dy = rows[:, 0] - xy[:, 0], rows[:, 1] - xy[:, 1]
        a, b, c = rows[:, 2], rows[:, 3], rows[:, 4]
        g_rows = torch.stack([g_sigma * (a * dx + b * dy), g_sigma * (b * dx + c * dy), g_sigma * 0.5 * dx * dx,
                              g_sigma * dx * dy, g_sigma * 0.5 * dy * dy, g_alpha * alpha / rows[:, 5]], -1)
        g_geo = torch.zeros_like(geo).index_add_(0, prow, g_rows)
        return g_geo, g_feat, None, None, None, None, None, None, None, None


def _composite_tiles(geo: Tensor, feat: Tensor, row: Tensor, tile: Tensor, corner: Tensor, inside: Tensor,
                     tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of a batch of tiles at once.

    Which (pixel, Gaussian) pairs contribute is decided without autograd; only those pairs (typically 1-20 % of
    the dense [tile pixels, tile list] matrices) are then composited (``_CompositePairs``), as gsplat's backward pass
    visits only the contributing pairs. The decision touches each dense matrix once: the quadratic form
    σ = ½(a dx² + c dy²) + b dx dy is linear in the six monomials (x², y², xy, x, y, 1) of the pixel centre
    (relative to its tile's centre, float64, so expanding it loses nothing), i.e. one [P,6]×[6,I] matrix product
    over all I (tile, Gaussian) intersections, and α ≥ 1/255 is the comparison σ ≤ ln(255·o). Read pixel-major, the
    surviving pairs come grouped by (pixel, tile) and, within a group, in depth order (the intersections are sorted
    by tile, then depth), so the transmittance cut-off (T ≤ 1e-4) and the per-pixel exclusive transmittance of the
    kept pairs are segmented cumulative sums over those pairs alone (float64: exact to ~1e-12). (A float32 product
    with a rounding margin and exact σ for its shortlist was tried: faster at 64 px and two threads, 82 against
    90 ms, but 5-20 % slower at 128-256 px, where re-deriving σ for the shortlist costs more than it saves.)

    Args:
        geo: [M,6] rows (μx, μy, a, b, c, opacity), depth-sorted within each camera; feat: [M,D] their features.
        row, tile: [I] each intersection's row of ``geo`` and its tile (0..T-1 in this batch), sorted by tile,
            then depth.
        corner: [T,2] pixel coordinates (x, y) of each tile's top-left corner.
        inside: [T,P] whether each of a tile's P = tile_size² pixels lies in the image.
    Returns:
        premultiplied features [T,P,D], alpha [T,P], and (no gradient) each row's largest blending weight α·T over
        this batch's pixels [M].
    """
    T, P, n_isect = corner.shape[0], tile_size * tile_size, row.shape[0]
    dev, dt = feat.device, feat.dtype
    j = torch.arange(tile_size, device=dev, dtype=torch.float64) + 0.5
    ly, lx = torch.meshgrid(j, j, indexing="ij")  # pixel centres relative to the tile's corner, row-major
    local = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1)  # [P,2]
    with torch.no_grad():
        q = geo.detach().index_select(0, row).double()
        half = 0.5 * tile_size
        x, y = local[:, 0] - half, local[:, 1] - half
        centre = corner.double().index_select(0, tile) + half  # [I,2]
        mx, my = q[:, 0] - centre[:, 0], q[:, 1] - centre[:, 1]
        a, b, c = q[:, 2], q[:, 3], q[:, 4]
        monomials = torch.stack([x * x, y * y, x * y, x, y, torch.ones_like(x)], -1)  # [P,6]
        coef = torch.stack([0.5 * a, 0.5 * c, b, -a * mx - b * my, -c * my - b * mx,
                            0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my], 0)  # [6,I]
        # α = min(0.999, o·e^(−σ)) ≥ 1/255  ⇔  σ ≤ ln(o/ALPHA_MIN)  (0.999 > 1/255)
        reach = torch.log((q[:, 5] / ALPHA_MIN).clamp_min(1e-30))
        sigma = monomials @ coef  # [P,I]
        # Pixel-major flat indices of σ ≤ reach: grouped by (pixel, tile), depth order inside each group. σ < 0
        # (no positive-definite conic) and pixels outside the image are dropped from the few survivors.
        flat = (sigma <= reach).view(-1).nonzero().squeeze(1)
        sig0 = sigma.view(-1).index_select(0, flat)
        p0 = torch.div(flat, n_isect, rounding_mode="floor")
        i0 = flat - p0 * n_isect
        t0 = tile.index_select(0, i0)
        ok = ((sig0 >= 0) & inside.view(-1).index_select(0, t0 * P + p0)).nonzero().squeeze(1)
        p0, i0, t0, sig0 = (v.index_select(0, ok) for v in (p0, i0, t0, sig0))
        seg0 = p0 * T + t0  # non-decreasing along the pairs
        opac0 = q[:, 5].index_select(0, i0) * torch.exp(-sig0)
        alpha0 = torch.clamp_max(opac0, ALPHA_MAX)
        log_1m0 = torch.log1p(-alpha0)
        log_t0 = _exclusive_segment_cumsum(log_1m0, seg0, T * P)  # log of the exclusive transmittance
        # The first Gaussian that would bring T to <= 1e-4 and everything behind it are dropped (gsplat's rule).
        # T only falls along a segment, so the kept pairs are a prefix of each and their log T stays as computed.
        keep = (log_t0 + log_1m0 > math.log(T_MIN)).nonzero().squeeze(1)
        i_idx, t_idx, p_idx, seg = (v.index_select(0, keep) for v in (i0, t0, p0, seg0))
        alpha = alpha0.index_select(0, keep)
        weights = alpha * torch.exp(log_t0.index_select(0, keep))  # α_i T_i
        free = opac0.index_select(0, keep) < ALPHA_MAX
        pix = t_idx * P + p_idx  # output slot, tile-major
        xy = (corner.index_select(0, t_idx) + local.index_select(0, p_idx)).to(dt)
        prow = row.index_select(0, i_idx)
        weights = weights.to(dt)
        top = feat.new_zeros(geo.shape[0]).scatter_reduce(0, prow, weights, "amax")
    feats, acc = _CompositePairs.apply(geo, feat, prow, pix, xy, seg, alpha.to(dt), weights, free.to(dt), T * P)
    return feats.reshape(T, P, -1), acc.reshape(T, P), top


MAX_DENSE = 1 << 22
"""Largest (intersection x tile pixel) decision matrix one batch of tiles builds (float64: 32 MiB); rasterize splits
the tiles into batches under it (a tile whose list alone exceeds it forms a batch of its own)."""


def rasterize(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], opacities: Float[Tensor, "C N"],
              features: Float[Tensor, "C N D"], depths: Float[Tensor, "C N"], radii: Int[Tensor, "C N 2"],
              width: int, height: int, *, tile_size: int = 16, checkpoint: bool = False,
              max_weight: Tensor | None = None, max_dense: int = MAX_DENSE
              ) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Composite projected Gaussians into premultiplied feature images and alpha (no background).

    One depth sort per camera; every (tile, Gaussian) pair whose box [μ₂ − r, μ₂ + r] touches the tile is then listed
    (gsplat's tile intersection, without its 64-bit keys), sorted by tile and, within a tile, by depth, and the tiles
    of all cameras are composited together in batches (``_composite_tiles``) of at most ``max_dense`` decision
    entries. ``checkpoint=True`` recomputes each batch in the backward pass, so only one batch's intermediates are
    alive at a time. ``max_weight``, a [C,N] tensor if given, receives (in place, as a running maximum) each
    Gaussian's largest blending weight α·T over the pixels of each image: 0 for a Gaussian that colours no pixel
    (culled, behind T ≤ 1e-4, or fainter than 1/255 everywhere).
    """
    C, N, D = features.shape
    dev, dt = features.device, features.dtype
    ts, P = tile_size, tile_size * tile_size
    ntx, nty = (width + ts - 1) // ts, (height + ts - 1) // ts
    n_tiles = C * nty * ntx
    with torch.no_grad():
        cam, gid = (radii > 0).any(-1).nonzero(as_tuple=True)
        order = torch.argsort(depths[cam, gid], stable=True)
        order = order[torch.argsort(cam[order], stable=True)]  # by camera, then depth
        cam, gid = cam[order], gid[order]
        m, r = means2d[cam, gid].detach(), radii[cam, gid].to(dt)
        # Tiles touched: [floor((μ-r)/ts), ceil((μ+r)/ts)) clamped to the grid, as gsplat bins them.
        t0 = torch.floor((m - r) / ts).clamp_min(0).long()
        t1 = torch.ceil((m + r) / ts).long()
        t1 = torch.stack([t1[:, 0].clamp_max(ntx), t1[:, 1].clamp_max(nty)], -1)
        span = (t1 - t0).clamp_min(0)
        count = span[:, 0] * span[:, 1]
        row = torch.repeat_interleave(torch.arange(cam.shape[0], device=dev), count)
        k = torch.arange(row.shape[0], device=dev) - (torch.cumsum(count, 0) - count)[row]
        nx = span[row, 0].clamp_min(1)
        tile = (cam[row] * nty + t0[row, 1] + k // nx) * ntx + t0[row, 0] + k % nx
        by_tile = torch.argsort(tile, stable=True)  # stable: depth order kept inside each tile
        row, tile = row[by_tile], tile[by_tile]
        per_tile = torch.bincount(tile, minlength=n_tiles)
        first = torch.cumsum(per_tile, 0) - per_tile  # each tile's first intersection
        batch = (first * P) // max(max_dense, P)  # non-decreasing: consecutive tiles share a batch
        bounds = torch.cat([torch.tensor([0], device=dev), (batch[1:] != batch[:-1]).nonzero().squeeze(1) + 1,
                            torch.tensor([n_tiles], device=dev)]).tolist()
        ids = torch.arange(n_tiles, device=dev)
        corner = torch.stack([ids % ntx * ts, ids // ntx % nty * ts], -1)  # [n_tiles,2] (x, y)
        j = torch.arange(ts, device=dev)
        inside = (((corner[:, 0, None, None] + j[None, None, :]) < width)
                  & ((corner[:, 1, None, None] + j[None, :, None]) < height)).reshape(n_tiles, P)
        first = first.tolist() + [row.shape[0]]
    geo = torch.cat([means2d[cam, gid], conics[cam, gid], opacities[cam, gid, None]], -1)
    feat = features[cam, gid]
    feats, alphas = [], []
    top = torch.zeros(cam.shape[0], dtype=dt, device=dev)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        s, e = first[a], first[b]
        args = (geo, feat, row[s:e], tile[s:e] - a, corner[a:b], inside[a:b], ts)
        if checkpoint and (geo.requires_grad or feat.requires_grad):
            f, al, batch_top = _checkpoint(_composite_tiles, *args, use_reentrant=False)
        else:
            f, al, batch_top = _composite_tiles(*args)
        feats.append(f)
        alphas.append(al)
        top = torch.maximum(top, batch_top)
    img = torch.cat(feats).reshape(C, nty, ntx, ts, ts, D).permute(0, 1, 3, 2, 4, 5)
    img = img.reshape(C, nty * ts, ntx * ts, D)[:, :height, :width]
    acc = torch.cat(alphas).reshape(C, nty, ntx, ts, ts).permute(0, 1, 3, 2, 4)
    acc = acc.reshape(C, nty * ts, ntx * ts)[:, :height, :width, None]
    if max_weight is not None and cam.shape[0] > 0:
        with torch.no_grad():
            max_weight[cam, gid] = torch.maximum(max_weight[cam, gid], top.detach().to(max_weight.dtype))
    return img, acc


@dataclass
class SplatResult:
    """What a splat backend returns: premultiplied features and alpha, plus projection data for densification."""

    render: Tensor  # [C,H,W,D] premultiplied features (no background)
    alpha: Tensor  # [C,H,W,1]
    means2d: Tensor  # [C,N,2] screen means (a graph node: retain_grad() it to read densification statistics)
    radii: Tensor  # [C,N,2] int32, 0 where culled
    depths: Tensor  # [C,N] camera-space z
    max_weight: Tensor | None = None  # [C,N] each Gaussian's largest α·T over the image (None: not computed)


def splat_torch(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                opacities: Float[Tensor, "N"], features: Float[Tensor, "C N D"], viewmats: Float[Tensor, "C 4 4"],
                Ks: Float[Tensor, "C 3 3"], width: int, height: int, *, eps2d: float = 0.3, near: float = 0.01,
                far: float = 1e10, tile_size: int = 16, antialiased: bool = False,
                checkpoint: bool = False) -> SplatResult:
    """Project and composite: the torch twin of ``gsplat.rasterization(..., packed=False, render_mode="RGB")``."""
    proj = project(means, covariance(quats, scales), viewmats, Ks, width, height, eps2d=eps2d, near=near, far=far,
                   opacities=opacities, antialiased=antialiased)
    top = torch.zeros(proj.depths.shape, dtype=features.dtype, device=features.device)
    render, alpha = rasterize(proj.means2d, proj.conics, proj.opacities, features, proj.depths, proj.radii,
                              width, height, tile_size=tile_size, checkpoint=checkpoint, max_weight=top)
    return SplatResult(render, alpha, proj.means2d, proj.radii, proj.depths, top)


__all__ = ["ALPHA_MIN", "ALPHA_MAX", "T_MIN", "SH_C0", "quat_to_rotmat", "covariance", "eval_sh", "Projection",
           "project", "rasterize", "SplatResult", "splat_torch"]
