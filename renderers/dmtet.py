"""Deep Marching Tetrahedra (DMTet, arXiv 2111.04276) on our own tetrahedral grid (renderers.md §3.2).

- Grid: (res + 1)³ vertices on [−r, r]³; every cube is split into 6 tetrahedra around its main diagonal (the
  Kuhn/Freudenthal split: one tet per permutation of the axes, walking from corner 000 to 111). The split is
  conforming across cubes, so the extracted surface is watertight. No NVIDIA grid file is shipped or needed.
- Per vertex: an SDF value s (negative inside) and a deformation bounded to ±(r/res)·tanh(Δ).
- Extraction: per tet, the inside/outside pattern of its 4 vertices gives 0, 1 (one vertex alone on its side) or
  2 (two and two: a quad) triangles; on each sign-changing edge (a, b) the vertex is p = (p_a s_b − p_b s_a) /
  (s_b − s_a), differentiable in s and p. Instead of a hand-written 16-case table, the triangle's winding is fixed
  geometrically: it is flipped when its normal points from the outside vertices towards the inside ones.
- Regulariser: on grid edges whose sign flips, BCE between each endpoint's sigmoid(s) and the other endpoint's
  sign (nvdiffrec's SDF regulariser), which discourages floaters and sign noise.
"""

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def tet_grid(res: int, radius: float) -> tuple[Tensor, Tensor]:
    """Vertices [(res+1)³, 3] on [−radius, radius]³ and tets [6·res³, 4] (int64)."""
    n = res + 1
    ax = torch.linspace(-radius, radius, n)
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    i, j, k = torch.meshgrid(torch.arange(res), torch.arange(res), torch.arange(res), indexing="ij")
    base = torch.stack([i, j, k], -1).reshape(-1, 3)
    tets = []
    for perm in itertools.permutations(range(3)):
        corner = base.clone()
        path = [corner.clone()]
        for a in perm:
            corner[:, a] += 1
            path.append(corner.clone())
        tets.append(torch.stack([(p[:, 0] * n + p[:, 1]) * n + p[:, 2] for p in path], -1))
    return verts, torch.cat(tets)


def grid_edges(tets: Tensor) -> Tensor:
    """Unique vertex pairs [E,2] of all tet edges."""
    e = torch.cat([tets[:, list(p)] for p in TET_EDGES])
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


def marching_tets(verts: Tensor, sdf: Tensor, tets: Tensor) -> tuple[Tensor, Tensor]:
    """Surface (vertices [M,3], faces [K,3] int64) of {sdf < 0}, differentiable in ``verts`` and ``sdf``."""
    with torch.no_grad():
        occ = sdf[tets] < 0  # [T,4]
        n_in = occ.sum(-1)
        valid = (n_in > 0) & (n_in < 4)
        tv, occ, n_in = tets[valid], occ[valid], n_in[valid]
        # Case A: one vertex alone on its side (1 inside or 3 inside) -> 1 triangle on its 3 edges.
        lone_mask = torch.where((n_in == 1)[:, None], occ, ~occ)
        single = (n_in != 2)
        lone = lone_mask[single].float().argmax(-1)
        ts = tv[single]
        others = torch.stack([(lone + d) % 4 for d in (1, 2, 3)], -1)
        a = ts.gather(1, lone[:, None]).expand(-1, 3)
        b = ts.gather(1, others)
        tri_a = torch.stack([a, b], -1)  # [Ta,3,2] edges
        # Case B: two inside (p, q), two outside (r, s) -> quad (pr, ps, qs, qr) -> 2 triangles.
        tq, oq = tv[~single], occ[~single]
        order = torch.argsort((~oq).float(), dim=1, stable=True)  # inside first
        p, q, r, s = (tq.gather(1, order[:, i:i + 1])[:, 0] for i in range(4))
        quad = torch.stack([torch.stack([p, r], -1), torch.stack([p, s], -1), torch.stack([q, s], -1),
                            torch.stack([q, r], -1)], 1)  # [Tb,4,2]
        tri_b = torch.cat([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])
        # outward reference: from the inside vertices' centroid to the outside ones'
        w_in = occ.float()
        ref_all = ((verts[tv] * (1 - w_in)[..., None]).sum(1) / (1 - w_in).sum(1, keepdim=True)
                   - (verts[tv] * w_in[..., None]).sum(1) / w_in.sum(1, keepdim=True))
        ref = torch.cat([ref_all[single], ref_all[~single], ref_all[~single]])
        tri_edges = torch.cat([tri_a, tri_b])  # [K,3,2] vertex pairs
        tri_edges = torch.sort(tri_edges, dim=-1).values
        keys = tri_edges[..., 0] * verts.shape[0] + tri_edges[..., 1]
        uniq, inv = torch.unique(keys.reshape(-1), return_inverse=True)
        faces = inv.view(-1, 3)
        ea, eb = uniq // verts.shape[0], uniq % verts.shape[0]
    if faces.numel() == 0:
        return verts.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=verts.device)
    sa, sb = sdf[ea][:, None], sdf[eb][:, None]
    denom = sb - sa
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    pts = (verts[ea] * sb - verts[eb] * sa) / denom
    with torch.no_grad():
        n = torch.linalg.cross(pts[faces[:, 1]] - pts[faces[:, 0]], pts[faces[:, 2]] - pts[faces[:, 0]], dim=-1)
        flip = (n * ref).sum(-1) < 0
        faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    return pts, faces


def sdf_sign_bce(sdf: Tensor, edges: Tensor) -> Tensor:
    """nvdiffrec's SDF regulariser on sign-flipping grid edges (0 when none flip)."""
    sa, sb = sdf[edges[:, 0]], sdf[edges[:, 1]]
    flip = (sa > 0) != (sb > 0)
    if not flip.any():
        return sdf.new_zeros(())
    sa, sb = sa[flip], sb[flip]
    return 0.5 * (F.binary_cross_entropy_with_logits(sa, (sb > 0).float())
                  + F.binary_cross_entropy_with_logits(sb, (sa > 0).float()))


def signed_distance_from_occupancy(inside: Tensor, spacing: float) -> Tensor:
    """Approximate signed distance (metres, negative inside) on a [n,n,n] boolean grid via Euclidean distance
    transforms (scipy), half a cell shifted so that the zero level lies between inside and outside samples."""
    from scipy.ndimage import distance_transform_edt  # noqa: PLC0415

    occ = inside.cpu().numpy()
    d_out = distance_transform_edt(~occ)  # outside: distance to the nearest inside sample
    d_in = distance_transform_edt(occ)
    sd = (d_out - 0.5) * (~occ) - (d_in - 0.5) * occ
    return torch.from_numpy(sd).float() * spacing


__all__ = ["tet_grid", "grid_edges", "marching_tets", "sdf_sign_bce", "signed_distance_from_occupancy",
           "TET_EDGES"]
