"""Pure-torch 3D Gaussian splatting: EWA projection and a tile-culled, depth-sorted compositor.

This is the readable reference that also runs on CPU; autograd provides the backward pass. It follows gsplat
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
   space, which is cheaper to differentiate than cumprod and never divides by zero.

Memory: each tile keeps a few [tile pixels, Gaussians in the tile] tensors for the backward pass, i.e. O(Σ over
tiles of 256·|tile list|), never a dense [pixels, N] graph. ``checkpoint=True`` recomputes each tile in the
backward pass instead, so only one tile's intermediates are alive at a time.
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


def _composite_tile(px: Tensor, py: Tensor, packed: Tensor, n_feat: int) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing of one tile.

    Which (pixel, Gaussian) pairs contribute is decided without autograd; only those pairs (typically 1-20 % of
    the tile's [P,S] matrix) are then computed differentiably, as gsplat's backward pass visits only the
    contributing pairs. The decision touches the dense matrix once: the quadratic form σ = ½(a dx² + c dy²) + b dx dy
    is linear in the six monomials (x², y², xy, x, y, 1) of the pixel centre (tile-local, float64, so expanding
    it loses nothing), i.e. one [P,6]×[6,S] matrix product, and α ≥ 1/255 is the comparison σ ≤ ln(255·o); the
    transmittance cut-off (T ≤ 1e-4) is then a segmented cumulative sum over the surviving pairs alone.
    Per-pixel exclusive transmittance of the kept pairs is the same segmented sum (float64: the running sum over a
    tile stays exact to ~1e-12), so neither pass materialises more than that one comparison matrix.

    Args:
        px, py: [P] pixel-centre coordinates.
        packed: [S,6+D] depth-sorted rows (μx, μy, a, b, c, opacity, features...).
    Returns:
        premultiplied features [P,D], alpha [P], and (no gradient) each row's largest blending weight α·T over the
        tile's pixels [S].
    """
    P = px.shape[0]
    with torch.no_grad():
        q = packed.detach().double()
        ox, oy = float(px.mean()), float(py.mean())
        x, y = px.double() - ox, py.double() - oy
        mx, my = q[:, 0] - ox, q[:, 1] - oy
        a, b, c = q[:, 2], q[:, 3], q[:, 4]
        monomials = torch.stack([x * x, y * y, x * y, x, y, torch.ones_like(x)], -1)  # [P,6]
        coef = torch.stack([0.5 * a, 0.5 * c, b, -a * mx - b * my, -c * my - b * mx,
                            0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my], 0)  # [6,S]
        sigma = monomials @ coef  # [P,S]
        # α = min(0.999, o·e^(−σ)) ≥ 1/255  ⇔  σ ≤ ln(o/ALPHA_MIN)  (0.999 > 1/255)
        reach = torch.log((q[:, 5] / ALPHA_MIN).clamp_min(1e-30))
        p0, s0 = ((sigma >= 0) & (sigma <= reach)).nonzero(as_tuple=True)
        alpha0 = torch.clamp_max(q[s0, 5] * torch.exp(-sigma[p0, s0]), ALPHA_MAX)
        log_1m0 = torch.log1p(-alpha0)
        # The first Gaussian that would bring T to <= 1e-4 and everything behind it are dropped (gsplat's rule).
        keep = _exclusive_segment_cumsum(log_1m0, p0, P) + log_1m0 > math.log(T_MIN)
        p_idx, s_idx = p0[keep], s0[keep]
    rows = packed.index_select(0, s_idx)  # [K,6+D], differentiable
    dx = rows[:, 0] - px[p_idx]
    dy = rows[:, 1] - py[p_idx]
    sigma = 0.5 * (rows[:, 2] * dx * dx + rows[:, 4] * dy * dy) + rows[:, 3] * dx * dy
    alpha = torch.clamp_max(rows[:, 5] * torch.exp(-sigma), ALPHA_MAX)
    log_1m = torch.log1p(-alpha)
    weights = alpha * torch.exp(_exclusive_segment_cumsum(log_1m, p_idx, P).to(alpha.dtype))  # α_i T_i, T exclusive
    feats = packed.new_zeros(P, n_feat).index_add(0, p_idx, weights[:, None] * rows[:, 6:6 + n_feat])
    log_t_pix = packed.new_zeros(P).index_add(0, p_idx, log_1m)
    top = packed.new_zeros(packed.shape[0]).scatter_reduce(0, s_idx, weights.detach(), "amax")
    return feats, 1.0 - torch.exp(log_t_pix), top


def rasterize(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], opacities: Float[Tensor, "C N"],
              features: Float[Tensor, "C N D"], depths: Float[Tensor, "C N"], radii: Int[Tensor, "C N 2"],
              width: int, height: int, *, tile_size: int = 16, checkpoint: bool = False,
              max_weight: Tensor | None = None) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Composite projected Gaussians into premultiplied feature images and alpha (no background).

    One global depth sort per camera; each tile then keeps, in that order, the Gaussians whose box
    [μ₂ − r, μ₂ + r] touches it (gsplat's tile binning without the 64-bit keys). ``max_weight``, a [C,N] tensor if
    given, receives (in place, as a running maximum) each Gaussian's largest blending weight α·T over the pixels of
    each image: 0 for a Gaussian that colours no pixel (culled, behind T ≤ 1e-4, or fainter than 1/255 everywhere).
    """
    C, N, D = features.shape
    dev, dt = features.device, features.dtype
    ntx, nty = (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size
    images, alphas = [], []
    for c in range(C):
        with torch.no_grad():
            vis = (radii[c] > 0).any(-1).nonzero().squeeze(1)
            vis = vis[torch.argsort(depths[c, vis], stable=True)]
            m, r = means2d[c, vis].detach(), radii[c, vis].to(dt)
            # Tiles touched: [floor((μ-r)/ts), ceil((μ+r)/ts)) clamped to the grid, as gsplat bins them.
            t0 = torch.floor((m - r) / tile_size).clamp_min(0)
            t1 = torch.ceil((m + r) / tile_size)
            t1 = torch.stack([t1[:, 0].clamp_max(ntx), t1[:, 1].clamp_max(nty)], -1)
        packed = torch.cat([means2d[c, vis], conics[c, vis], opacities[c, vis, None], features[c, vis]], -1)
        img = torch.zeros(height, width, D, dtype=dt, device=dev)
        acc = torch.zeros(height, width, dtype=dt, device=dev)
        tiles_f, tiles_a = [], []
        for ty in range(nty):
            row_f, row_a = [], []
            y0, y1 = ty * tile_size, min(height, (ty + 1) * tile_size)
            in_row = (t0[:, 1] <= ty) & (t1[:, 1] > ty)
            for tx in range(ntx):
                x0, x1 = tx * tile_size, min(width, (tx + 1) * tile_size)
                sel = (in_row & (t0[:, 0] <= tx) & (t1[:, 0] > tx)).nonzero().squeeze(1)
                if sel.numel() == 0:
                    row_f.append(torch.zeros(y1 - y0, x1 - x0, D, dtype=dt, device=dev))
                    row_a.append(torch.zeros(y1 - y0, x1 - x0, dtype=dt, device=dev))
                    continue
                py, px = torch.meshgrid(torch.arange(y0, y1, device=dev, dtype=dt) + 0.5,
                                        torch.arange(x0, x1, device=dev, dtype=dt) + 0.5, indexing="ij")
                rows = packed.index_select(0, sel)
                if checkpoint and rows.requires_grad:
                    f, a, top = _checkpoint(_composite_tile, px.reshape(-1), py.reshape(-1), rows, D,
                                            use_reentrant=False)
                else:
                    f, a, top = _composite_tile(px.reshape(-1), py.reshape(-1), rows, D)
                if max_weight is not None:
                    idx = vis[sel]
                    max_weight[c, idx] = torch.maximum(max_weight[c, idx], top.detach().to(max_weight.dtype))
                row_f.append(f.reshape(y1 - y0, x1 - x0, D))
                row_a.append(a.reshape(y1 - y0, x1 - x0))
            tiles_f.append(torch.cat(row_f, dim=1))
            tiles_a.append(torch.cat(row_a, dim=1))
        img = torch.cat(tiles_f, dim=0) if tiles_f else img
        acc = torch.cat(tiles_a, dim=0) if tiles_a else acc
        images.append(img)
        alphas.append(acc[..., None])
    return torch.stack(images), torch.stack(alphas)


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
