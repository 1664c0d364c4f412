"""Differentiable triangle rasterisation in pure torch (renderers.md §4, plan "1 + 3"), nvdiffrast-shaped.

The four ops mirror nvdiffrast's (renderers.md §3.1) so the cuda backend is a drop-in replacement:

- ``rasterize(pos, tri, (H, W))`` → rast [B,H,W,4] = (u, v, z/w, tri_id + 1), background all 0. Vertex 0 of the
  visible triangle has (u, v) = (1, 0), vertex 1 (0, 1), vertex 2 (0, 0); (u, v) are perspective-correct
  barycentrics. Clip y = −1 is image row 0 (nvdiffrast's convention; a camera that wants row 0 at the top negates
  P[1,1]). Pixel (x, y) has its centre at NDC ((2x + 1)/W − 1, (2y + 1)/H − 1).
- ``interpolate(attr, rast, tri)`` → [B,H,W,C], zero on the background.
- ``texture(tex, uv, uv_da=None)`` → bilinear lookup with wrap/clamp boundaries; with ``uv_da`` (screen-space uv
  derivatives, from ``bary_derivatives`` + ``interpolate_da``) trilinear mip-mapping at a per-pixel level.
- ``antialias(color, rast, pos, tri)`` → analytic silhouette antialiasing, the source of silhouette gradients.

How rasterisation works (two passes):

1. *Coverage and z-buffer, no grad.* Every triangle's screen bounding box is split into ``tile``×``tile`` pixel
   tiles; each (triangle, tile) pair tests all its tile pixels with edge functions
   e_k(p) = cross(v_{k+1} − p, v_{k+2} − p) (inside: all e_k have the sign of the area Σ_k e_k, inclusive), and
   the nearest z/w wins through one ``scatter_reduce(amin)`` on a packed int64 key (z/w + 2 as float32 bits in
   the high word, the triangle id in the low word; equal depths go to the lower id). Work is ≈ Σ pairs × tile²
   instead of pixels × triangles. Triangles with a vertex at w ≤ 0 are dropped (no near-plane clipping), as are
   pixels with z/w outside [−1, 1].
2. *Differentiable barycentrics.* For the covered pixels only, the winning triangle's screen-space barycentrics
   b_k = e_k / Σ e_k are recomputed with autograd from ``pos``, then made perspective-correct,
   λ_k = (b_k / w_k) / Σ_j (b_j / w_j), and z/w = Σ b_k z_k / w_k (affine in screen space). Interior gradients
   are exact; coverage itself has none — ``antialias`` supplies the silhouette ones.

Antialiasing (nvdiffrast's analytic pass, written from its paper's description, arXiv 2011.03277 §3.3): for every
horizontally or vertically adjacent pixel pair (A, B) with different triangle ids, the *front* triangle f is the
nearer one (or the only one). Along the segment from A's centre (covered by f) to B's, f's edge functions are
linear; the first edge to turn negative is crossed at t = e_A / (e_A − e_B) ∈ [0, 1]. The edge counts only when it
is a silhouette: no neighbouring triangle across it, or the neighbour's opposite vertex lies on the same screen
side as f's own (a fold). With a one-pixel box filter, f covers B's half of the segment by t − ½ when t > ½, so
B += (t − ½)(c_A − c_B); otherwise A loses ½ − t of its coverage, A += (½ − t)(c_B − c_A). Gradients reach the
edge's vertices through t. Sub-pixel triangles can be missed; supersample if that matters.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

_KEY_EMPTY = torch.iinfo(torch.int64).max


def _batched_pos(pos: Tensor) -> Tensor:
    return pos[None] if pos.ndim == 2 else pos


def _screen(pos: Tensor, H: int, W: int) -> tuple[Tensor, Tensor, Tensor]:
    """Screen xy [B,V,2] in pixel units (pixel centres at integers), z/w [B,V] and w [B,V]."""
    w = pos[..., 3]
    w_safe = torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)
    x = (pos[..., 0] / w_safe + 1) * (0.5 * W) - 0.5
    y = (pos[..., 1] / w_safe + 1) * (0.5 * H) - 0.5
    return torch.stack([x, y], -1), pos[..., 2] / w_safe, w


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


def _edge_functions(v: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """e_k(p) = cross(v_{k+1} − p, v_{k+2} − p) for triangles v [...,3,2] at points (px, py) [...] → [...,3]."""
    out = []
    for k in range(3):
        a, b = v[..., (k + 1) % 3, :], v[..., (k + 2) % 3, :]
        out.append(_cross(a[..., 0] - px, a[..., 1] - py, b[..., 0] - px, b[..., 1] - py))
    return torch.stack(out, -1)


@torch.no_grad()
def _coverage(xy: Tensor, zw: Tensor, w: Tensor, tri: Tensor, H: int, W: int, tile: int,
              chunk_pixels: int) -> Tensor:
    """Winning triangle id per pixel, [B,H,W] int64 (−1 for background)."""
    B, F_ = xy.shape[0], tri.shape[0]
    v = xy[:, tri]  # [B,F,3,2]
    z = zw[:, tri]  # [B,F,3]
    area = _cross(v[..., 1, 0] - v[..., 0, 0], v[..., 1, 1] - v[..., 0, 1],
                  v[..., 2, 0] - v[..., 0, 0], v[..., 2, 1] - v[..., 0, 1])
    lo, hi = v.amin(-2), v.amax(-2)  # [B,F,2]
    x0, y0 = lo[..., 0].ceil().clamp_min(0), lo[..., 1].ceil().clamp_min(0)
    x1, y1 = hi[..., 0].floor().clamp_max(W - 1), hi[..., 1].floor().clamp_max(H - 1)
    ok = ((w[:, tri] > 1e-8).all(-1) & (area.abs() > 1e-12) & (x0 <= x1) & (y0 <= y1)
          & (z.amin(-1) <= 1) & (z.amax(-1) >= -1) & torch.isfinite(area))
    key = torch.full((B * H * W,), _KEY_EMPTY, dtype=torch.int64, device=xy.device)
    flat = [t.reshape(-1) for t in (x0, x1, y0, y1)]
    ext = torch.maximum(flat[1] - flat[0], flat[3] - flat[2]) + 1  # bbox extent in pixels
    ok = ok.reshape(-1)
    tables = (v.reshape(-1, 3, 2), z.reshape(-1, 3), area.reshape(-1), *flat)
    # Small triangles get one window of s×s pixels at their bbox corner (s = 2, 4, 8); larger ones are split
    # into ``tile``-aligned tiles. Either way the pixels tested per triangle stay close to its bbox area.
    assigned = ~ok
    for s in (2, 4, 8):
        sel = (~assigned & (ext <= s)).nonzero()[:, 0]
        assigned |= ext <= s
        if sel.numel():
            _test_windows(key, tables, sel, flat[0][sel].long(), flat[2][sel].long(), s, F_, H, W, chunk_pixels)
    fid = (~assigned).nonzero()[:, 0]  # flat b*F + f
    if fid.numel():
        tx0, tx1 = (flat[0][fid] // tile).long(), (flat[1][fid] // tile).long()
        ty0, ty1 = (flat[2][fid] // tile).long(), (flat[3][fid] // tile).long()
        ntx, nty = tx1 - tx0 + 1, ty1 - ty0 + 1
        counts = ntx * nty
        pair_face = torch.repeat_interleave(fid, counts)
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(pair_face.numel(), device=xy.device) - torch.repeat_interleave(start, counts)
        ntx_p = torch.repeat_interleave(ntx, counts)
        ox = (torch.repeat_interleave(tx0, counts) + local % ntx_p) * tile
        oy = (torch.repeat_interleave(ty0, counts) + local // ntx_p) * tile
        _test_windows(key, tables, pair_face, ox, oy, tile, F_, H, W, chunk_pixels)
    tid = torch.where(key == _KEY_EMPTY, torch.full_like(key, -1), key & 0xFFFFFFFF)
    return tid.view(B, H, W)


def _test_windows(key: Tensor, tables: tuple, faces: Tensor, ox: Tensor, oy: Tensor, s: int, F_: int, H: int,
                  W: int, chunk_pixels: int) -> None:
    """Edge-test the s×s pixels at origins (ox, oy) against ``faces`` (flat b*F + f); z-buffer into ``key``."""
    vf, zf, af, x0f, x1f, y0f, y1f = tables
    off = torch.arange(s, device=key.device)
    per = max(1, chunk_pixels // (s * s))
    for c in range(0, faces.numel(), per):
        f = faces[c:c + per]
        pxi = (ox[c:c + per, None, None] + off[None, None, :]).expand(-1, s, s)  # [P,s,s]
        pyi = (oy[c:c + per, None, None] + off[None, :, None]).expand(-1, s, s)
        px, py = pxi.to(vf.dtype), pyi.to(vf.dtype)
        e = _edge_functions(vf[f][:, None, None], px, py)  # [P,s,s,3]
        a = af[f][:, None, None]
        inside = ((e * a.sign()[..., None]) >= 0).all(-1)
        inside &= (px <= x1f[f, None, None]) & (py <= y1f[f, None, None])
        inside &= (px >= x0f[f, None, None]) & (py >= y0f[f, None, None])
        if not inside.any():
            continue
        p_idx, ty, tx = inside.nonzero(as_tuple=True)
        ff = f[p_idx]
        depth = (e[p_idx, ty, tx] * zf[ff]).sum(-1) / af[ff]
        good = (depth >= -1) & (depth <= 1)
        ff, depth = ff[good], depth[good]
        b = ff // F_
        pix = b * (H * W) + pyi[p_idx, ty, tx][good] * W + pxi[p_idx, ty, tx][good]
        zbits = (depth + 2.0).float().view(torch.int32).long()
        key.scatter_reduce_(0, pix, (zbits << 32) | (ff - b * F_), reduce="amin")


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int], tile: int = 16,
              chunk_pixels: int = 1 << 21) -> Tensor:
    """rast [B,H,W,4] = (u, v, z/w, tri_id + 1) for clip-space ``pos`` [B,V,4] or [V,4] and ``tri`` [F,3].

    (u, v, z/w) carry gradients to ``pos``; the triangle id does not. ``chunk_pixels`` bounds the coverage pass's
    working set (pixel tests per chunk).
    """
    H, W = resolution
    pos = _batched_pos(pos)
    tri = tri.long()
    xy, zw, w = _screen(pos, H, W)
    tid = _coverage(xy.detach(), zw.detach(), w.detach(), tri, H, W, tile, chunk_pixels)
    B = pos.shape[0]
    flat = tid.reshape(-1)
    idx = (flat >= 0).nonzero()[:, 0]
    out = pos.new_zeros(B * H * W, 4)
    if idx.numel() == 0:
        return out.view(B, H, W, 4)
    b = idx // (H * W)
    f = flat[idx]
    py = ((idx % (H * W)) // W).to(pos.dtype)
    px = (idx % W).to(pos.dtype)
    vidx = tri[f]  # [P,3]
    v = xy[b[:, None], vidx]  # [P,3,2]
    e = _edge_functions(v, px, py)
    bary = e / e.sum(-1, keepdim=True)
    inv_w = 1.0 / w[b[:, None], vidx]
    persp = bary * inv_w
    lam = persp / persp.sum(-1, keepdim=True)
    depth = (bary * zw[b[:, None], vidx]).sum(-1)
    vals = torch.stack([lam[:, 0], lam[:, 1], depth, (f + 1).to(pos.dtype)], -1)
    return out.index_put((idx,), vals).view(B, H, W, 4)


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """Per-pixel attributes [B,H,W,C] from vertex attributes ``attr`` [V,C] or [B,V,C] (zero on background)."""
    B, H, W, _ = rast.shape
    flat = rast.reshape(-1, 4)
    tid = flat[:, 3].detach().long() - 1
    idx = (tid >= 0).nonzero()[:, 0]
    C = attr.shape[-1]
    out = attr.new_zeros(B * H * W, C)
    if idx.numel() == 0:
        return out.view(B, H, W, C)
    vidx = tri.long()[tid[idx]]  # [P,3]
    if attr.ndim == 2:
        a = attr[vidx]
    else:
        a = attr[(idx // (H * W))[:, None], vidx]
    u, v = flat[idx, 0:1], flat[idx, 1:2]
    vals = u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2]
    return out.index_put((idx,), vals).view(B, H, W, C)


@torch.no_grad()
def bary_derivatives(pos: Tensor, tri: Tensor, rast: Tensor) -> Tensor:
    """rast_db [B,H,W,4] = (du/dx, du/dy, dv/dx, dv/dy): screen-space derivatives (per pixel) of the
    perspective-correct barycentrics (u, v) of ``rast``, analytic, zero on the background (nvdiffrast's rast_db).

    Screen barycentrics b_k = e_k / S are affine (de_k/dx = a_y − b_y, de_k/dy = b_x − a_x for the edge a→b opposite
    vertex k, S = Σ e_k); with q_k = b_k / w_k and Q = Σ q_k, λ_k = q_k / Q and dλ_k = (dq_k − λ_k dQ) / Q.
    """
    B, H, W, _ = rast.shape
    pos = _batched_pos(pos.detach())
    xy, _, w = _screen(pos, H, W)
    flat = rast.reshape(-1, 4)
    tid = flat[:, 3].long() - 1
    idx = (tid >= 0).nonzero()[:, 0]
    out = rast.new_zeros(B * H * W, 4)
    if idx.numel() == 0:
        return out.view(B, H, W, 4)
    b = idx // (H * W)
    vidx = tri.long()[tid[idx]]
    v = xy[b[:, None], vidx]  # [P,3,2]
    px, py = (idx % W).to(v.dtype), ((idx % (H * W)) // W).to(v.dtype)
    e = _edge_functions(v, px, py)
    S = e.sum(-1, keepdim=True)
    a, c = v[:, [1, 2, 0]], v[:, [2, 0, 1]]  # the edge opposite vertex k runs v_{k+1} -> v_{k+2}
    db_dx, db_dy = (a[..., 1] - c[..., 1]) / S, (c[..., 0] - a[..., 0]) / S
    inv_w = 1.0 / w[b[:, None], vidx]
    q = e / S * inv_w
    Q = q.sum(-1, keepdim=True)
    lam = q / Q
    dq_dx, dq_dy = db_dx * inv_w, db_dy * inv_w
    dl_dx = (dq_dx - lam * dq_dx.sum(-1, keepdim=True)) / Q
    dl_dy = (dq_dy - lam * dq_dy.sum(-1, keepdim=True)) / Q
    vals = torch.stack([dl_dx[:, 0], dl_dy[:, 0], dl_dx[:, 1], dl_dy[:, 1]], -1)
    return out.index_put((idx,), vals.to(out.dtype)).view(B, H, W, 4)


def interpolate_da(attr: Tensor, rast: Tensor, tri: Tensor, rast_db: Tensor) -> Tensor:
    """Screen-space derivatives [B,H,W,2C] of the interpolated ``attr`` [V,C] (or [B,V,C]): per channel c,
    (dA_c/dx, dA_c/dy), nvdiffrast's attribute-derivative layout (A = u a_0 + v a_1 + (1 − u − v) a_2)."""
    B, H, W, _ = rast.shape
    tid = rast.reshape(-1, 4)[:, 3].detach().long() - 1
    idx = (tid >= 0).nonzero()[:, 0]
    C = attr.shape[-1]
    out = attr.new_zeros(B * H * W, 2 * C)
    if idx.numel() == 0:
        return out.view(B, H, W, 2 * C)
    vidx = tri.long()[tid[idx]]
    a = attr[vidx] if attr.ndim == 2 else attr[(idx // (H * W))[:, None], vidx]  # [P,3,C]
    db = rast_db.reshape(-1, 4)[idx].to(attr.dtype)
    d0, d1 = a[:, 0] - a[:, 2], a[:, 1] - a[:, 2]  # [P,C]
    dx = db[:, 0:1] * d0 + db[:, 2:3] * d1
    dy = db[:, 1:2] * d0 + db[:, 3:4] * d1
    return out.index_put((idx,), torch.stack([dx, dy], -1).reshape(-1, 2 * C)).view(B, H, W, 2 * C)


def level_of_detail(uv_da: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-pixel level of detail log2(ρ) ≥ 0 from ``uv_da`` [...,4] = (du/dx, du/dy, dv/dx, dv/dy) for a texture of
    ``size`` (h, w): ρ is the longer of the pixel's two footprint axes in texels (the isotropic OpenGL rule)."""
    h, w = size
    ddx = torch.stack([uv_da[..., 0] * w, uv_da[..., 2] * h], -1).norm(dim=-1)
    ddy = torch.stack([uv_da[..., 1] * w, uv_da[..., 3] * h], -1).norm(dim=-1)
    return torch.log2(torch.maximum(ddx, ddy).clamp_min(1e-12)).clamp_min(0.0)


def mip_pyramid(tex: Tensor, levels: int | None = None) -> list[Tensor]:
    """2×2-average mips of ``tex`` [B,h,w,C] down to 1 texel on the short side (or ``levels`` levels)."""
    out = [tex]
    while min(out[-1].shape[1:3]) > 1 and (levels is None or len(out) < levels):
        x = out[-1].permute(0, 3, 1, 2)
        out.append(F.avg_pool2d(x, 2, ceil_mode=True).permute(0, 2, 3, 1))
    return out


def _sample(tex: Tensor, uv: Tensor, mode: str, padding: str) -> Tensor:
    grid = uv * 2 - 1
    out = F.grid_sample(tex.permute(0, 3, 1, 2), grid, mode=mode, padding_mode=padding, align_corners=False)
    return out.permute(0, 2, 3, 1)


def texture(tex: Tensor, uv: Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap",
            mip_level: float = 0.0, uv_da: Tensor | None = None) -> Tensor:
    """Sample ``tex`` [B,h,w,C] (or [h,w,C]) at ``uv`` [B,H,W,2]; uv (0,0) is the first texel in memory.

    filter_mode "linear" or "nearest"; boundary_mode "wrap", "clamp" or "zero". ``uv_da`` [B,H,W,4] (screen-space
    uv derivatives) selects trilinear mip-mapping: each pixel blends the two 2×2-average mip levels around its own
    level of detail (``mip_level``), which is raised by the scalar ``mip_level`` bias. Without ``uv_da`` a scalar
    ``mip_level`` > 0 samples the pyramid at that one level for every pixel.
    """
    if tex.ndim == 3:
        tex = tex[None]
    if tex.shape[0] == 1 and uv.shape[0] > 1:
        tex = tex.expand(uv.shape[0], -1, -1, -1)
    mode = {"linear": "bilinear", "nearest": "nearest"}.get(filter_mode)
    if mode is None:
        raise ValueError(f"filter_mode must be linear or nearest, got {filter_mode!r}")
    match boundary_mode:
        case "wrap":
            uv, padding = uv - uv.detach().floor(), "border"
        case "clamp":
            padding = "border"
        case "zero":
            padding = "zeros"
        case _:
            raise ValueError(f"boundary_mode must be wrap, clamp or zero, got {boundary_mode!r}")
    if uv_da is not None:
        mips = mip_pyramid(tex)
        lvl = (level_of_detail(uv_da.detach(), tex.shape[1:3]) + float(mip_level)).clamp(0, len(mips) - 1)
        out = 0.0
        for k, m in enumerate(mips):  # tent weights: each pixel uses its two neighbouring levels
            wk = (1 - (lvl - k).abs()).clamp_min(0)[..., None]
            if bool((wk > 0).any()):
                out = out + wk * _sample(m, uv, mode, padding)
        return out
    if mip_level <= 0:
        return _sample(tex, uv, mode, padding)
    mips = mip_pyramid(tex)
    lvl = min(float(mip_level), len(mips) - 1.0)
    lo = int(lvl)
    hi = min(lo + 1, len(mips) - 1)
    frac = lvl - lo
    out = _sample(mips[lo], uv, mode, padding)
    return out if frac == 0 else (1 - frac) * out + frac * _sample(mips[hi], uv, mode, padding)


def edge_topology(tri: Tensor, n_vertices: int | None = None) -> tuple[Tensor, Tensor]:
    """Across-edge neighbours for ``tri`` [F,3]: (neighbour face [F,3], neighbour's opposite vertex [F,3]), −1
    where an edge has no neighbour. Local edge k is the one opposite vertex k. Edges shared by more than two
    triangles pair up in sorted order (non-manifold input still rasterises)."""
    tri = tri.long()
    Fn = tri.shape[0]
    V = int(n_vertices if n_vertices is not None else (tri.max().item() + 1 if Fn else 1))
    a = torch.stack([tri[:, 1], tri[:, 2], tri[:, 0]], 1).reshape(-1)
    b = torch.stack([tri[:, 2], tri[:, 0], tri[:, 1]], 1).reshape(-1)
    key = torch.minimum(a, b) * V + torch.maximum(a, b)
    order = torch.argsort(key, stable=True)
    ks = key[order]
    nb_face = torch.full((Fn * 3,), -1, dtype=torch.long, device=tri.device)
    nb_vert = torch.full((Fn * 3,), -1, dtype=torch.long, device=tri.device)
    n = ks.numel()
    if n > 1:
        run_start = torch.ones(n, dtype=torch.bool, device=tri.device)
        run_start[1:] = ks[1:] != ks[:-1]
        run_id = torch.cumsum(run_start.long(), 0) - 1
        rank = torch.arange(n, device=tri.device) - run_start.nonzero()[:, 0][run_id]
        i = torch.arange(n - 1, device=tri.device)
        sel = i[(rank[:-1] % 2 == 0) & (run_id[1:] == run_id[:-1])]
        h0, h1 = order[sel], order[sel + 1]
        opp = tri.reshape(-1)  # local edge k of face f is half-edge 3f+k, opposite vertex tri[f,k]
        nb_face[h0], nb_face[h1] = h1 // 3, h0 // 3
        nb_vert[h0], nb_vert[h1] = opp[h1], opp[h0]
    return nb_face.view(Fn, 3), nb_vert.view(Fn, 3)


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor,
              topology: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Analytic silhouette antialiasing of ``color`` [B,H,W,C] (see the module docstring).

    ``topology`` is ``edge_topology(tri)``, precomputed once per mesh (computed here when None).
    """
    B, H, W, C = color.shape
    pos = _batched_pos(pos)
    tri = tri.long()
    if topology is None:
        topology = edge_topology(tri, pos.shape[1])
    nb_face, nb_vert = topology
    xy, _, _ = _screen(pos, H, W)
    tid = rast[..., 3].detach().long() - 1
    zw = rast[..., 2].detach()
    flat_c = color.reshape(-1, C)
    delta = color.new_zeros(B * H * W, C)
    ys, xs = torch.meshgrid(torch.arange(H, device=color.device), torch.arange(W, device=color.device),
                            indexing="ij")
    pix = (torch.arange(B, device=color.device)[:, None, None] * H * W + ys * W + xs)
    for dy, dx in ((0, 1), (1, 0)):
        p = pix[:, : H - dy, : W - dx].reshape(-1)
        q = pix[:, dy:, dx:].reshape(-1)
        tp, tq = tid.reshape(-1)[p], tid.reshape(-1)[q]
        differ = tp != tq
        p, q, tp, tq = p[differ], q[differ], tp[differ], tq[differ]
        zp, zq = zw.reshape(-1)[p], zw.reshape(-1)[q]
        front_p = (tq < 0) | ((tp >= 0) & (zp < zq))
        A = torch.where(front_p, p, q)
        Bq = torch.where(front_p, q, p)
        f = torch.where(front_p, tp, tq)
        b = A // (H * W)
        v = xy[b[:, None], tri[f]]  # [N,3,2] with grad
        ax, ay = (A % W).to(xy.dtype), ((A % (H * W)) // W).to(xy.dtype)
        bx, by = (Bq % W).to(xy.dtype), ((Bq % (H * W)) // W).to(xy.dtype)
        area = _edge_functions(v.detach(), ax, ay).sum(-1)
        sgn = area.sign()[:, None]
        eA = _edge_functions(v, ax, ay) * sgn
        eB = _edge_functions(v, bx, by) * sgn
        crosses = (eB.detach() < 0) & (eA.detach() >= 0)
        denom = (eA - eB)
        t_all = torch.where(crosses, eA / torch.where(crosses, denom, torch.ones_like(denom)),
                            torch.full_like(eA, 2.0))
        k = t_all.detach().argmin(-1)
        has = crosses.any(-1)
        # silhouette test on edge k: no neighbour, or the neighbour's opposite vertex on the same side (a fold)
        nf = nb_face[f, k]
        nv = nb_vert[f, k]
        own = tri[f, k]
        ea = xy[b, tri[f, (k + 1) % 3]].detach()
        eb = xy[b, tri[f, (k + 2) % 3]].detach()
        side_own = _cross(eb[:, 0] - ea[:, 0], eb[:, 1] - ea[:, 1], xy[b, own, 0].detach() - ea[:, 0],
                          xy[b, own, 1].detach() - ea[:, 1])
        nvc = nv.clamp_min(0)
        side_nb = _cross(eb[:, 0] - ea[:, 0], eb[:, 1] - ea[:, 1], xy[b, nvc, 0].detach() - ea[:, 0],
                         xy[b, nvc, 1].detach() - ea[:, 1])
        silhouette = (nf < 0) | (side_own * side_nb > 0)
        use = has & silhouette
        if not use.any():
            continue
        t = t_all.gather(1, k[:, None])[:, 0][use].clamp(0, 1)
        A, Bq = A[use], Bq[use]
        cA, cB = flat_c[A], flat_c[Bq]
        alpha = (t - 0.5)[:, None]
        to_b = alpha.detach()[:, 0] > 0
        delta = delta.index_add(0, Bq[to_b], alpha[to_b] * (cA[to_b] - cB[to_b]))
        delta = delta.index_add(0, A[~to_b], -alpha[~to_b] * (cB[~to_b] - cA[~to_b]))
    return color + delta.view(B, H, W, C)


__all__ = ["rasterize", "interpolate", "texture", "antialias", "edge_topology", "mip_pyramid"]
