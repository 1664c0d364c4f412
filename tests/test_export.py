"""Export (issue #6): GLB / OBJ+MTL / USD / USDZ / 3DGS PLY, checked the way the tools that read them would.

- every GLB produced here passes the Khronos glTF validator (node + tests/js's gltf-validator) with zero errors;
- round trips: trimesh reloads geometry and textures; USD is opened with usd-core and its material network walked;
- channel semantics: roughness in G, metallic in B, occlusion in R, baseColor sRGB, OpenGL normal map decoded with
  the GLB's own TANGENT attribute;
- the shapes world: the GLB of a red cube *is* the cube (volume IoU from the GLB alone) and red, and a ray-cast
  render of the reloaded GLB through the engine's cameras matches the ground-truth render (frame, scale, up).
Scenes are analytic (smooth occupancy of foundation.shapes.sdf), a hand-built Gaussians scene, a PBR mesh scene with
export_mesh/query_material, and a NeRF run folder for the CLI and the end-of-run export.
"""

import json
import math
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from tiny_models import split_cube

from engine.export import ExportOptions, bake_scene, export_scene
from engine.export.bake import linear_to_srgb
from engine.export.gltf import read_glb_json
from foundation import shapes
from foundation.cameras import orbit_cameras
from renderers.base import DensityField, MeshSource, PBRMaterial

torch.set_num_threads(min(2, torch.get_num_threads()))
HERE = os.path.dirname(os.path.abspath(__file__))
VALIDATOR = os.path.join(HERE, "gltf_validate.mjs")
RED = np.array(shapes.COLOURS["red"], dtype=np.float64)
SMALL = dict(texture_size=256, resolution=96, max_faces=6000)


# -- scenes -----------------------------------------------------------------------------------------------------------
class ShapeScene(DensityField):
    """σ = 1000/m · sigmoid(−sdf / 2 mm) of a canonical shape (nearly solid: its render-matched surface lies ~2 mm
    outside the canonical one), constant display-referred albedo."""

    def __init__(self, shape="cube", colour="red"):
        self.shape, self.colour = shape, torch.tensor(shapes.COLOURS[colour], dtype=torch.float32) / 255

    def query_density(self, x):
        return 1000.0 * torch.sigmoid(-shapes.sdf(self.shape, x) / 0.002)

    def query_albedo(self, x):
        return self.colour.expand(x.shape[0], 3)


def _cube_mesh(half=0.4, with_uv=False):
    """24-vertex cube (tiny_models.split_cube) as torch tensors; optional uv: one cell of a 3x2 grid per face."""
    verts, faces, uvs = split_cube(half)
    out = {"vertices": torch.tensor(verts, dtype=torch.float32), "faces": torch.tensor(faces)}
    if with_uv:
        out["uv"] = torch.tensor(uvs, dtype=torch.float32)
    return out


class PBRCubeScene(MeshSource, PBRMaterial):
    """A mesh/PBR scene: its own cube mesh and a material with known values; the shading normal is tilted by
    +0.5 along world +Y on the four side faces (so the baked normal map has a known, non-flat content)."""

    def __init__(self, albedo_linear=(0.5, 0.2, 0.1), roughness=0.25, metallic=0.75, with_uv=False):
        self.albedo = torch.tensor(albedo_linear)
        self.roughness, self.metallic, self.with_uv = roughness, metallic, with_uv

    def export_mesh(self):
        return _cube_mesh(with_uv=self.with_uv)

    @staticmethod
    def shading_normal(x):
        axis = x.abs().argmax(-1)
        n = torch.nn.functional.one_hot(axis, 3).float() * x.sign()
        side = axis != 1
        n[side] = n[side] + torch.tensor([0.0, 0.5, 0.0])
        return torch.nn.functional.normalize(n, dim=-1)

    def query_material(self, x):
        m = x.shape[0]
        return {"albedo": self.albedo.expand(m, 3), "roughness": torch.full((m,), self.roughness),
                "metallic": torch.full((m,), self.metallic), "normal": self.shading_normal(x)}


# -- helpers -----------------------------------------------------------------------------------------------------------
def _validator_ready() -> bool:
    return shutil.which("node") is not None and os.path.isdir(os.path.join(HERE, "js", "node_modules",
                                                                            "gltf-validator"))


def assert_valid_glb(path):
    """Khronos glTF validator: zero errors (warnings are reported in the message if any)."""
    if not _validator_ready():  # the README's test command installs it; an unvalidated GLB is not a pass
        pytest.fail("the glTF validator is missing: run `npm ci --prefix tests/js` (node required)")
    res = subprocess.run(["node", VALIDATOR, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode in (0, 1), res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["numErrors"] == 0, report["messages"]
    assert report["numWarnings"] == 0, report["messages"]
    return report


def load_glb(path):
    import trimesh

    return trimesh.load(str(path), force="mesh", process=False)


def _raycast(vertices, faces, o, d):
    """Nearest hit of rays o, d [R,3] against triangles (Möller–Trumbore): hit [R], face [R], barycentrics [R,3]."""
    v0 = vertices[faces[:, 0]]
    e1, e2 = vertices[faces[:, 1]] - v0, vertices[faces[:, 2]] - v0
    oo, dd = o[:, None], d[:, None]
    p = np.cross(dd, e2[None])
    det = (e1[None] * p).sum(-1)
    inv = 1.0 / np.where(np.abs(det) > 1e-12, det, np.inf)
    tv = oo - v0[None]
    u = (tv * p).sum(-1) * inv
    q = np.cross(tv, e1[None])
    v = (dd * q).sum(-1) * inv
    t = (e2[None] * q).sum(-1) * inv
    t = np.where((u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6) & (np.abs(det) > 1e-12), t, np.inf)
    f = t.argmin(-1) if t.shape[1] else np.zeros(len(o), dtype=int)
    rows = np.arange(len(o))
    hit = np.isfinite(t[rows, f]) if t.shape[1] else np.zeros(len(o), dtype=bool)
    uu, vv = (u[rows, f], v[rows, f]) if t.shape[1] else (np.zeros(len(o)), np.zeros(len(o)))
    return hit, f, np.stack([1 - uu - vv, uu, vv], -1)


def raycast_cameras(vertices, faces, cams, tile=8):
    """Per pixel of engine cameras: hit [C,H,W], face [C,H,W], barycentrics [C,H,W,3]. Triangles are culled per
    tile of pixels by their projected bounding boxes (same pinhole model as Cameras.rays)."""
    o, d = cams.rays()
    C, H, W = o.shape[:3]
    o, d = o.numpy().astype(np.float64), d.numpy().astype(np.float64)
    hit = np.zeros((C, H, W), dtype=bool)
    face = np.zeros((C, H, W), dtype=np.int64)
    bary = np.zeros((C, H, W, 3))
    for ci in range(C):
        c2w = cams.c2w[ci].double().numpy()
        pc = (vertices - c2w[:3, 3]) @ c2w[:3, :3]  # camera coordinates, looking down -Z
        f = float(cams.focal[ci])
        depth = np.maximum(-pc[:, 2], 1e-6)
        px = f * pc[:, 0] / depth + W / 2 - 0.5
        py = -f * pc[:, 1] / depth + H / 2 - 0.5
        tri_x, tri_y = px[faces], py[faces]
        lo_x, hi_x, lo_y, hi_y = tri_x.min(1), tri_x.max(1), tri_y.min(1), tri_y.max(1)
        for r0 in range(0, H, tile):
            for c0 in range(0, W, tile):
                sel = np.nonzero((hi_x >= c0 - 1) & (lo_x <= c0 + tile) & (hi_y >= r0 - 1) & (lo_y <= r0 + tile))[0]
                if not len(sel):
                    continue
                oo = o[ci, r0:r0 + tile, c0:c0 + tile].reshape(-1, 3)
                dd = d[ci, r0:r0 + tile, c0:c0 + tile].reshape(-1, 3)
                h, fi, b = _raycast(vertices, faces[sel], oo, dd)
                shp = o[ci, r0:r0 + tile, c0:c0 + tile].shape[:2]
                hit[ci, r0:r0 + tile, c0:c0 + tile] = h.reshape(shp)
                face[ci, r0:r0 + tile, c0:c0 + tile] = sel[fi].reshape(shp)
                bary[ci, r0:r0 + tile, c0:c0 + tile] = b.reshape(shp + (3,))
    return hit, face, bary


def voxel_iou(vertices, faces, shape, n=64, extent=0.6):
    """Volume IoU of a closed mesh against foundation.shapes.inside on an n³ grid of cell centres.

    Inside-ness from the GLB alone: a sample is inside when a +Z ray from below crosses the surface an odd number of
    times before reaching it (columns are processed in 8x8 tiles against the triangles overlapping the tile).
    """
    axis = (np.arange(n) + 0.5) / n * 2 * extent - extent
    v = vertices[faces]  # [F,3,3]
    a, b, c = v[:, 0, :2], v[:, 1, :2], v[:, 2, :2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    good = np.abs(area) > 1e-14
    a, b, c, area, vz = a[good], b[good], c[good], area[good], v[good][..., 2]
    lo, hi = np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)
    occ = np.zeros((n, n, n), dtype=bool)
    for i0 in range(0, n, 8):
        for j0 in range(0, n, 8):
            xs, ys = axis[i0:i0 + 8], axis[j0:j0 + 8]
            sel = (hi[:, 0] >= xs[0]) & (lo[:, 0] <= xs[-1]) & (hi[:, 1] >= ys[0]) & (lo[:, 1] <= ys[-1])
            if not sel.any():
                continue
            P = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 1, 2) + 1e-7 * np.array([1.0, 0.7])
            A, B, Cc, ar = a[sel][None], b[sel][None], c[sel][None], area[sel][None]

            def edge(p, q):
                return ((q[..., 0] - p[..., 0]) * (P[..., 1] - p[..., 1])
                        - (q[..., 1] - p[..., 1]) * (P[..., 0] - p[..., 0]))

            w = np.stack([edge(B, Cc), edge(Cc, A), edge(A, B)], -1) / ar[..., None]
            zh = np.where((w >= 0).all(-1), (w * vz[sel][None]).sum(-1), np.inf)  # [cols, F_sel]
            crossings = (zh[:, :, None] < axis[None, None, :]).sum(1)  # [cols, n]
            occ[i0:i0 + 8, j0:j0 + 8] = (crossings % 2 == 1).reshape(len(xs), len(ys), n)
    X, Y, Z = np.meshgrid(axis, axis, axis, indexing="ij")
    pts = torch.tensor(np.stack([X, Y, Z], -1).reshape(-1, 3), dtype=torch.float32)
    gt = shapes.inside(shape, pts).numpy().reshape(n, n, n)
    return (occ & gt).sum() / (occ | gt).sum()


def _texture_at(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of img [H,W,C] at trimesh uv (bottom-left origin)."""
    H, W = img.shape[:2]
    col = np.clip((uv[:, 0] * W).astype(int), 0, W - 1)
    row = np.clip(((1 - uv[:, 1]) * H).astype(int), 0, H - 1)
    return img[row, col]


def render_glb(mesh, cams):
    """Ray-cast the reloaded GLB through engine cameras, shaded like the shapes world: rgb [C,H,W,3] on white and
    coverage [C,H,W]."""
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces)
    base = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255
    uv = np.asarray(mesh.visual.uv)
    normals = np.asarray(mesh.vertex_normals)
    light = np.array(shapes.LIGHT_DIR) / np.linalg.norm(shapes.LIGHT_DIR)
    hit, f, bary = raycast_cameras(vertices, faces, cams)
    tri = faces[f]  # [C,H,W,3]
    t_uv = (uv[tri] * bary[..., None]).sum(-2)
    n = (normals[tri] * bary[..., None]).sum(-2)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    shade = shapes.AMBIENT + shapes.DIFFUSE * np.clip(n @ light, 0, None)
    colour = _texture_at(base, t_uv.reshape(-1, 2)).reshape(t_uv.shape[:-1] + (3,))
    rgb = np.where(hit[..., None], colour * shade[..., None], 1.0)
    return rgb, hit


# -- module fixtures: one red-cube export in every mesh format ---------------------------------------------------------
@pytest.fixture(scope="module")
def red_cube(tmp_path_factory):
    out = tmp_path_factory.mktemp("red_cube")
    paths = {f: str(out / f"model.{f}") for f in ("glb", "obj", "usd", "usdz")}
    report = export_scene(ShapeScene("cube", "red"), list(paths), paths, ExportOptions(**SMALL))
    return out, paths, report


@pytest.fixture(scope="module")
def pbr_cube(tmp_path_factory):
    out = tmp_path_factory.mktemp("pbr_cube")
    paths = {"glb": str(out / "pbr.glb"), "obj": str(out / "pbr.obj"), "usd": str(out / "pbr.usda")}
    report = export_scene(PBRCubeScene(), list(paths), paths, ExportOptions(texture_size=128))
    return out, paths, report


# -- GLB ---------------------------------------------------------------------------------------------------------------
def test_red_cube_glb_validates_and_has_the_pbr_slots(red_cube):
    _, paths, _ = red_cube
    report = assert_valid_glb(paths["glb"])
    assert report["info"]["drawCallCount"] == 1
    gltf = read_glb_json(paths["glb"])
    prim = gltf["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TANGENT", "TEXCOORD_0"}
    mat = gltf["materials"][prim["material"]]
    pbr = mat["pbrMetallicRoughness"]
    tex = gltf["textures"]
    img = [i["name"] for i in gltf["images"]]
    assert img[tex[pbr["baseColorTexture"]["index"]]["source"]] == "baseColor"
    assert img[tex[pbr["metallicRoughnessTexture"]["index"]]["source"]] == "orm"
    assert img[tex[mat["occlusionTexture"]["index"]]["source"]] == "orm"
    assert img[tex[mat["normalTexture"]["index"]]["source"]] == "normal"
    assert pbr["metallicFactor"] == pbr["roughnessFactor"] == 1.0
    assert all(i["mimeType"] == "image/png" for i in gltf["images"])


def test_red_cube_glb_is_the_cube_and_red(red_cube):
    _, paths, report = red_cube
    mesh = load_glb(paths["glb"])
    iou = voxel_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), "cube")
    assert iou > 0.9, iou
    base = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    centroids_uv = np.asarray(mesh.visual.uv)[np.asarray(mesh.faces)].mean(1)
    surface_colour = _texture_at(base, centroids_uv).mean(0)
    assert np.abs(surface_colour - RED).max() < 3, surface_colour
    assert np.abs(base.reshape(-1, 3).mean(0) - RED).max() < 3  # gutters are filled with chart colours too
    # centred, Y-up, metres: the cube's bounds are ±0.4 m (within a grid cell and the render-matched offset)
    assert np.allclose(mesh.bounds, [[-0.4] * 3, [0.4] * 3], atol=0.035), mesh.bounds
    assert report["mesh"]["faces"] <= SMALL["max_faces"]


def test_rendered_glb_matches_the_ground_truth_render(red_cube):
    """A ray-cast of the *reloaded* GLB through the engine's own cameras vs foundation.shapes' render: same frame,
    scale and up (no rotation surprises), same colour."""
    _, paths, _ = red_cube
    mesh = load_glb(paths["glb"])
    cams = orbit_cameras([0.0, 60.0, 135.0], [15.0, 30.0, -20.0], 2.5, 40.0, 32)
    rgb, hit = render_glb(mesh, cams)
    gt_rgb, gt_alpha = shapes.render_ground_truth("cube", "red", cams)
    gt = gt_alpha[..., 0].numpy() > 0.5
    iou = (hit & gt).sum() / (hit | gt).sum()
    assert iou > 0.9, iou
    mse = ((rgb - gt_rgb.numpy()) ** 2).mean()
    assert -10 * math.log10(mse) > 20


def test_cone_is_upright_in_every_format(tmp_path):
    """The cone's apex is up (+Y) in GLB/OBJ and along +Z with --up z; a Y-up USD stage says so."""
    pytest.importorskip("pxr")
    import trimesh

    opts = dict(texture_size=64, resolution=48, max_faces=3000)
    scene = ShapeScene("cone", "orange")
    paths = {"glb": str(tmp_path / "y.glb"), "obj": str(tmp_path / "y.obj")}
    export_scene(scene, list(paths), paths, ExportOptions(**opts))
    for p in paths.values():
        m = trimesh.load(p, force="mesh", process=False)
        v = np.asarray(m.vertices)
        top, bottom = v[v[:, 1] > 0.35], v[v[:, 1] < -0.4]
        assert len(top) and np.linalg.norm(top[:, [0, 2]], axis=-1).max() < 0.12  # the apex is narrow
        assert np.linalg.norm(bottom[:, [0, 2]], axis=-1).max() > 0.4  # the base is wide
    zpaths = {"glb": str(tmp_path / "z.glb"), "usd": str(tmp_path / "z.usda")}
    export_scene(scene, list(zpaths), zpaths, ExportOptions(up="z", **opts))
    vz = np.asarray(load_glb(zpaths["glb"]).vertices)
    vy = np.asarray(load_glb(paths["glb"]).vertices)
    assert np.allclose(vz[:, 2], vy[:, 1], atol=1e-5) and np.allclose(vz[:, 1], -vy[:, 2], atol=1e-5)
    assert_valid_glb(zpaths["glb"])
    from pxr import Usd, UsdGeom
    stage = Usd.Stage.Open(zpaths["usd"])
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z


# -- channel semantics -------------------------------------------------------------------------------------------------
def test_pbr_channels_land_in_the_right_slots(pbr_cube):
    out, paths, _ = pbr_cube
    assert_valid_glb(paths["glb"])
    mesh = load_glb(paths["glb"])
    mat = mesh.visual.material
    mr = np.asarray(mat.metallicRoughnessTexture.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    assert np.abs(mr[:, 1] - 0.25 * 255).max() <= 1  # G roughness
    assert np.abs(mr[:, 2] - 0.75 * 255).max() <= 1  # B metallic
    assert np.abs(mr[:, 0] - 255).max() <= 1  # R occlusion (none: 1)
    base = np.asarray(mat.baseColorTexture.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    assert np.allclose(base, linear_to_srgb(np.array([0.5, 0.2, 0.1])) * 255, atol=1), base  # sRGB-encoded
    from PIL import Image
    tex = {k: np.asarray(Image.open(out / "pbr_textures" / f"{k}.png"), dtype=np.float64)
           for k in ("albedo", "roughness", "metallic", "normal", "orm")}
    assert tex["roughness"].ndim == 2 and np.abs(tex["roughness"] - 64).max() <= 1
    assert np.abs(tex["metallic"] - 191).max() <= 1
    assert np.array_equal(tex["orm"][..., 1], tex["roughness"]) and np.array_equal(tex["orm"][..., 2],
                                                                                     tex["metallic"])
    assert np.array_equal(tex["albedo"], np.asarray(mat.baseColorTexture.convert("RGB"), dtype=np.float64))


def _decode_normals(glb_path, pts_filter, flip_green=False):
    """World normals decoded glTF-style: n = x T + y B + z N, B = w (N × T), at face centroids."""
    import pygltflib

    g = pygltflib.GLTF2().load(str(glb_path))
    blob = g.binary_blob()

    def acc(i, comps):
        a = g.accessors[i]
        v = g.bufferViews[a.bufferView]
        dt = np.float32 if a.componentType == 5126 else np.uint32
        return np.frombuffer(blob, dt, a.count * comps, v.byteOffset + (a.byteOffset or 0)).reshape(a.count, comps)

    at = g.meshes[0].primitives[0].attributes
    P, N, T, UV = acc(at.POSITION, 3), acc(at.NORMAL, 3), acc(at.TANGENT, 4), acc(at.TEXCOORD_0, 2)
    F = acc(g.meshes[0].primitives[0].indices, 1).reshape(-1, 3)
    mesh = load_glb(glb_path)
    img = np.asarray(mesh.visual.material.normalTexture.convert("RGB"), dtype=np.float64) / 255
    c = P[F].mean(1)
    keep = pts_filter(c)
    F, c = F[keep], c[keep]
    uv = UV[F].mean(1)
    H, W = img.shape[:2]
    ts = img[np.clip((uv[:, 1] * H).astype(int), 0, H - 1), np.clip((uv[:, 0] * W).astype(int), 0, W - 1)] * 2 - 1
    if flip_green:
        ts[:, 1] = -ts[:, 1]
    n = N[F].mean(1)
    t = T[F][..., :3].mean(1)
    w = T[F][:, 0, 3]
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    t -= n * (t * n).sum(-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    b = np.cross(n, t) * w[:, None]
    world = ts[:, :1] * t + ts[:, 1:2] * b + ts[:, 2:3] * n
    return c, world / np.linalg.norm(world, axis=-1, keepdims=True)


@pytest.mark.parametrize("convention", ["opengl", "directx"])
def test_normal_map_decodes_with_the_written_tangents(tmp_path, convention):
    """The baked tangent-space map, decoded with the GLB's TANGENT/NORMAL the way glTF viewers do, gives back the
    scene's shading normal (DirectX maps need G flipped first)."""
    path = tmp_path / "n.glb"
    export_scene(PBRCubeScene(), ["glb"], {"glb": str(path)}, ExportOptions(texture_size=128, normal_map=convention))
    assert_valid_glb(path)
    side = lambda c: np.abs(c[:, 1]) < 0.35  # noqa: E731 - faces of the four side quads
    c, world = _decode_normals(path, side, flip_green=convention == "directx")
    expect = PBRCubeScene.shading_normal(torch.tensor(c * 1.001, dtype=torch.float32)).numpy()
    assert np.degrees(np.arccos(np.clip((world * expect).sum(-1), -1, 1))).max() < 4
    if convention == "directx":  # read as OpenGL, a DirectX map tilts the wrong way
        _, wrong = _decode_normals(path, side)
        assert np.degrees(np.arccos(np.clip((wrong * expect).sum(-1), -1, 1))).max() > 20


def test_field_normal_map_is_flat_on_flat_faces(red_cube):
    _, paths, _ = red_cube
    mesh = load_glb(paths["glb"])
    img = np.asarray(mesh.visual.material.normalTexture.convert("RGB"), dtype=np.float64)
    uv = np.asarray(mesh.visual.uv)[np.asarray(mesh.faces)].mean(1)
    c = np.asarray(mesh.vertices)[np.asarray(mesh.faces)].mean(1)
    flat = (np.abs(c) < 0.3).sum(-1) == 2  # face centres well inside a cube face
    ts = _texture_at(img, uv[flat]) / 255 * 2 - 1
    assert np.median(ts[:, 2]) > 0.98


def test_user_uvs_are_kept(tmp_path):
    scene = PBRCubeScene(with_uv=True)
    baked = bake_scene(scene, ExportOptions(texture_size=64))
    assert np.allclose(baked.mesh.uv, scene.export_mesh()["uv"].numpy(), atol=1e-6)
    assert baked.info["kept_uv"] and baked.mesh.vertices.shape[0] == 24
    path = tmp_path / "uv.glb"
    export_scene(scene, ["glb"], {"glb": str(path)}, ExportOptions(texture_size=64))
    assert_valid_glb(path)


# -- OBJ / USD round trips ---------------------------------------------------------------------------------------------
def test_obj_round_trip(red_cube):
    import trimesh
    from PIL import Image

    out, paths, _ = red_cube
    obj = trimesh.load(paths["obj"], force="mesh", process=False, maintain_order=True)
    glb = load_glb(paths["glb"])
    assert obj.vertices.shape == glb.vertices.shape and np.allclose(obj.vertices, glb.vertices, atol=1e-5)
    assert np.array_equal(np.asarray(obj.faces), np.asarray(glb.faces))
    assert np.allclose(obj.visual.uv, glb.visual.uv, atol=1e-5)  # trimesh flips glTF v; the OBJ stores 1 - v
    albedo = np.asarray(Image.open(out / "model_textures" / "albedo.png"))
    assert np.array_equal(np.asarray(obj.visual.material.image.convert("RGB")), albedo)
    mtl = dict(line.split(None, 1) for line in open(out / "model.mtl").read().splitlines() if " " in line)
    for key in ("map_Kd", "map_Pr", "map_Pm", "norm"):
        assert os.path.isfile(out / mtl[key].strip()), key
    assert iou_ok(obj)


def iou_ok(mesh) -> bool:
    return voxel_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), "cube", n=24) > 0.88


def _walk_material(stage, mesh_path="/Asset/Mesh"):
    from pxr import UsdShade

    prim = stage.GetPrimAtPath(mesh_path)
    material, _ = UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()
    assert material, "no material bound"
    surface = material.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    wiring = {}
    for name in ("diffuseColor", "roughness", "metallic", "occlusion", "normal"):
        src, out_name, _ = surface.GetInput(name).GetConnectedSource()
        tex = UsdShade.Shader(src.GetPrim())
        assert tex.GetIdAttr().Get() == "UsdUVTexture"
        st_src = tex.GetInput("st").GetConnectedSource()[0]
        assert UsdShade.Shader(st_src.GetPrim()).GetIdAttr().Get() == "UsdPrimvarReader_float2"
        wiring[name] = (os.path.basename(tex.GetInput("file").Get().path), out_name,
                        tex.GetInput("sourceColorSpace").Get())
    return wiring


def test_usd_material_network(red_cube):
    pxr = pytest.importorskip("pxr")
    from pxr import Usd, UsdGeom

    _, paths, _ = red_cube
    for key in ("usd", "usdz"):
        stage = Usd.Stage.Open(paths[key])
        assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
        assert stage.GetDefaultPrim().GetPath() == pxr.Sdf.Path("/Asset")
        mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/Asset/Mesh"))
        glb = load_glb(paths["glb"])
        assert np.allclose(np.array(mesh.GetPointsAttr().Get()), glb.vertices, atol=1e-5)
        st = np.array(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st").Get())
        assert np.allclose(st, glb.visual.uv, atol=1e-5)
        wiring = _walk_material(stage)
        assert wiring == {"diffuseColor": ("albedo.png", "rgb", "sRGB"), "roughness": ("orm.png", "g", "raw"),
                          "metallic": ("orm.png", "b", "raw"), "occlusion": ("orm.png", "r", "raw"),
                          "normal": ("normal.png", "rgb", "raw")}
        # the textures resolve (beside the .usd; inside the .usdz package)
        from pxr import UsdShade
        surface = UsdShade.Material(stage.GetPrimAtPath("/Asset/Looks/Material")).ComputeSurfaceSource()[0]
        src = surface.GetInput("diffuseColor").GetConnectedSource()[0]
        assert UsdShade.Shader(src.GetPrim()).GetInput("file").Get().resolvedPath
    names = zipfile.ZipFile(paths["usdz"]).namelist()
    assert names[0].endswith(".usdc")
    assert {"textures/albedo.png", "textures/orm.png", "textures/normal.png"} <= set(names)


# -- Gaussians: mesh from the opacity field, and the PLY ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gaussian_cube():
    from renderers.gaussians import GaussiansConfig, rgb_to_sh0

    scene = GaussiansConfig(num_points=8, init_scale=0.05).build(torch.Generator().manual_seed(0))
    axis = torch.linspace(-0.36, 0.36, 10)
    means = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    n = means.shape[0]
    state = scene.state_dict()
    state.update({"means": means, "log_scales": torch.full((n, 3), math.log(0.04)),
                  "quats": torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
                  "opacity_logits": torch.full((n,), math.log(0.9 / 0.1)),
                  "sh_dc": rgb_to_sh0(torch.tensor(RED / 255, dtype=torch.float32).expand(n, 3)),
                  "sh_rest": torch.zeros(n, state["sh_rest"].shape[1], 3),
                  "grad2d_sum": torch.zeros(n), "grad2d_count": torch.zeros(n)})
    scene.load_state_dict(state)
    return scene


def test_gaussians_export_glb_and_ply(gaussian_cube, tmp_path):
    from renderers.ply import read_ply_vertices

    paths = {"glb": str(tmp_path / "g.glb"), "ply": str(tmp_path / "g_splats.ply")}
    report = export_scene(gaussian_cube, ["glb", "ply"], paths, ExportOptions(texture_size=128, resolution=48))
    assert report["mesh"]["field"] == "opacity"
    assert_valid_glb(paths["glb"])
    mesh = load_glb(paths["glb"])
    # The lattice renders opaque beyond its 0.4 m cube: at 2σ past the last row each splat gives α = 0.9·e^-2 = 0.12,
    # and ten in a row accumulate 0.72. The mesh matches those renders (the automatic level), so it is a rounded cube
    # of half-size about 0.44 m: its volume IoU with the 0.4 m cube is about 0.8.
    assert voxel_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), "cube", n=32) > 0.78
    assert 0.41 < np.abs(np.asarray(mesh.vertices)).max() < 0.46
    base = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    assert np.abs(base.reshape(-1, 3).mean(0) - RED).max() < 4
    ply = read_ply_vertices(paths["ply"])
    assert len(ply["x"]) == gaussian_cube.num_gaussians
    assert len([k for k in ply if k.startswith("f_rest_")]) == 45


@pytest.mark.parametrize("resolution", [40, 64])
def test_automatic_level_gives_the_exported_mesh_the_silhouettes_of_the_renders(gaussian_cube, resolution):
    """The automatic iso-level is bisected on the grid the mesh is extracted from, so the exported mesh covers what
    the scene's renders cover over the matching views (a half-resolution bisection grid left it 3-4 % smaller on
    the shapes world's runs, docs/benchmarks.md session 40)."""
    from engine.export.mesh import covered_pixels, extract_mesh
    from engine.init_from import init_cameras
    from engine.outputs import render_views

    mesh, info, _ = extract_mesh(gaussian_cube, resolution=resolution)
    cams = init_cameras(info["bound"], 64)
    _, alpha = render_views(gaussian_cube, cams, torch.ones(3))
    assert covered_pixels(mesh.vertices, mesh.faces, cams) == pytest.approx(float(alpha.sum()), rel=0.01)


def test_gaussians_export_the_colour_their_renders_show(tmp_path):
    """A red-skinned cube of splats with a blue core, in a faint white haze: the GLB's baseColor is the colour the
    splatter shows from six sides (both as the mean of linear colour, in sRGB), within 8/255 per channel. The point
    query the bake used before (the density-weighted mean around a point just inside the surface) gave (220, 99, 99)
    against the renders' (206, 69, 77) (issue #17: exported Gaussians 30% brighter than their renders)."""
    from engine.export.fidelity import linear_to_srgb255, score_glb, srgb_to_linear
    from foundation.cameras import orbit_cameras
    from renderers.gaussians import GaussiansConfig, rgb_to_sh0

    scene = GaussiansConfig(num_points=8, init_scale=0.05).build(torch.Generator().manual_seed(0))
    axis, outer = torch.linspace(-0.36, 0.36, 10), torch.linspace(-0.44, 0.44, 12)
    body = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    haze = torch.stack(torch.meshgrid(outer, outer, outer, indexing="ij"), -1).reshape(-1, 3)
    haze = haze[haze.abs().amax(-1) > 0.4]
    core = body.abs().amax(-1) < 0.3
    means, n = torch.cat([body, haze]), body.shape[0] + haze.shape[0]
    colour = torch.cat([torch.where(core[:, None], torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.8, 0.1, 0.1])),
                        torch.ones(haze.shape[0], 3)])
    opacity = torch.cat([torch.full((body.shape[0],), 0.9), torch.full((haze.shape[0],), 0.1)])
    state = scene.state_dict()
    state.update({"means": means, "log_scales": torch.full((n, 3), math.log(0.04)),
                  "quats": torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(), "opacity_logits": torch.logit(opacity),
                  "sh_dc": rgb_to_sh0(colour), "sh_rest": torch.zeros(n, state["sh_rest"].shape[1], 3),
                  "grad2d_sum": torch.zeros(n), "grad2d_count": torch.zeros(n)})
    scene.load_state_dict(state)
    export_scene(scene, ["glb"], {"glb": str(tmp_path / "g.glb")}, ExportOptions(texture_size=128, resolution=48))
    baked = np.asarray(score_glb(str(tmp_path / "g.glb"), "cube", "red").base_colour)
    cams = orbit_cameras(torch.tensor([0.0, 90, 180, 270, 0, 0]), torch.tensor([0.0, 0, 0, 0, 89, -89]), 3.0, 40.0, 64)
    with torch.no_grad():
        out = scene.render(cams, torch.zeros(3))
    seen = (out.rgb / out.alpha.clamp_min(1e-6))[out.alpha[..., 0] > 0.9].numpy()
    shown = linear_to_srgb255(srgb_to_linear(seen).mean(0))
    assert np.abs(baked - shown).max() < 8, (baked, shown)


def test_ply_needs_a_gaussian_scene(tmp_path):
    from engine.export import ExportError

    with pytest.raises(ExportError, match="Gaussian"):
        export_scene(ShapeScene(), ["ply"], {"ply": str(tmp_path / "x.ply")})


# -- run folders: the CLI and the end-of-run export --------------------------------------------------------------------
def _tiny_generate(tmp_path, name, *extra):
    from engine.cli import build_generate_config
    from engine.train import generate

    cfg, _ = build_generate_config(["a red cube", "--steps", "2", "--resolution", "16", "--out",
                                    str(tmp_path / name), "--train.video-frames", "0", "--train.eval-views", "0",
                                    "--train.preview-every", "0", "--train.no-progress",
                                    "--train.export-texture-size", "64", *extra])
    return generate(cfg)


def test_generate_exports_a_glb_at_the_end(tmp_path, monkeypatch):
    import functools

    import engine.export
    from engine.outputs import read_status

    # the real end-of-run export, on a coarser grid and face budget to keep the test short
    monkeypatch.setattr(engine.export, "ExportOptions",
                        functools.partial(engine.export.ExportOptions, resolution=48, max_faces=3000))
    run = _tiny_generate(tmp_path, "run")
    status = read_status(run)
    assert status["state"] == "complete"
    assert "export_error" not in status, status  # the seeded 2-step field has a surface (measured); a failed
    # export would still leave the run complete, with the retry command in the message (tested below)
    assert status["exports"]["glb"] == os.path.join("export", "model.glb")
    assert_valid_glb(os.path.join(run, "export", "model.glb"))
    for f in ("albedo", "roughness", "metallic", "normal", "orm"):
        assert os.path.isfile(os.path.join(run, "export", "model_textures", f"{f}.png"))


def test_export_failure_does_not_lose_the_run(tmp_path, monkeypatch):
    import engine.export
    from engine.outputs import read_status

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine.export, "export_finished_run", boom)
    run = _tiny_generate(tmp_path, "run")
    status = read_status(run)
    assert status["state"] == "complete" and "disk on fire" in status["export_error"]
    assert "engine export" in status["message"]


def test_cli_export_run_folder(tmp_path, capsys):
    from engine.cli import main

    run = _tiny_generate(tmp_path, "run", "--train.no-export")
    assert not os.path.exists(os.path.join(run, "export"))
    out = tmp_path / "out.glb"
    code = main(["export", run, "--format", "glb", "--out", str(out), "--texture-size", "64", "--faces", "2000",
                 "--resolution", "32"])
    assert code == 0, capsys.readouterr().err
    assert code == 0 and out.exists()
    assert_valid_glb(out)
    assert len(load_glb(out).faces) <= 2000
    assert os.path.isfile(tmp_path / "out_textures" / "orm.png")
    code = main(["export", run, "--format", "ply"])
    assert code == 2 and "Gaussian" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert main(["export", run, "--format", "fbx"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("prior, silhouette_bar", [("shapes", 0.70), ("shapes-exemplar", 0.85)])
def test_red_cube_demo_run_exports_the_cube(tmp_path, prior, silhouette_bar):
    """The README demo (`engine generate "a red cube"`, the learned prior) and the same on the closed-form prior end
    with a GLB that is the cube and red; the demo's GLB meets issue #17's geometry and albedo bounds. Measured GLB
    silhouette IoU (4 views, 32 px): 0.745 on the learned prior before it read the camera (session 38), whose
    oversized drum the export followed; above 0.85 on the exemplar prior."""
    from engine.cli import build_generate_config
    from engine.train import generate

    cfg, _ = build_generate_config(["a red cube", "--prior", prior, "--out", str(tmp_path / "demo"),
                                    "--train.no-progress", "--train.video-frames", "0",
                                    "--train.export-texture-size", "256"])
    run = generate(cfg)
    glb = os.path.join(run, "export", "model.glb")
    assert_valid_glb(glb)
    mesh = load_glb(glb)
    # the NeRF's own field is ~0.1 m larger than the cube after 400 CPU steps (measured volume IoU 0.73 on the
    # exemplar prior, 0.67 on the learned one); the silhouette of the GLB through the engine's cameras follows it
    assert voxel_iou(np.asarray(mesh.vertices), np.asarray(mesh.faces), "cube", n=32) > 0.6
    cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], 15.0, 2.5, 40.0, 32)
    _, hit = render_glb(mesh, cams)
    gt = shapes.render_ground_truth("cube", "red", cams)[1][..., 0].numpy() > 0.5
    assert (hit & gt).sum() / (hit | gt).sum() > silhouette_bar
    base = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64)
    uv = np.asarray(mesh.visual.uv)[np.asarray(mesh.faces)].mean(1)
    colour = _texture_at(base, uv).mean(0)
    assert colour[0] > 2 * max(colour[1], colour[2]), colour
    if prior == "shapes":
        # issue #17's goals: the albedo's, met on the learned prior since its NeRF trains under the world's key light,
        # and the geometry's, since the prior reads each view's camera (sessions 38-39; bench_fidelity.py, 512 px
        # textures, the shipped E with the NeRF's warm-up at CFG 2.5, views from -30, albedo smoothness 10 and the
        # see-through start (session 43), the optical-depth surface (session 44): accuracy 0.016 m, completeness
        # 0.023 m, chromaticity 0.007, luminance 0.89, face spread 2.4)
        from engine.export.fidelity import score_glb
        fid = score_glb(glb, "cube", "red", seed=0)
        assert fid.accuracy <= 0.02 and fid.completeness <= 0.025 and fid.largest_piece >= 0.98, fid
        assert fid.chromaticity_distance <= 0.06 and 0.85 <= fid.luminance_ratio <= 1.15 and fid.face_spread < 10, fid
        # the mesh chain from that run (100 steps, engine.compose.REFINEMENT) meets them too (session 44,
        # bench_fidelity.py: 0.018 / 0.024 m, one piece, chromaticity 0.000, luminance 1.04, face spread 5.3)
        cfg, _ = build_generate_config(["a red cube", "--renderer", "mesh", "--renderer.init-from", run, "--steps",
                                        "100", "--out", str(tmp_path / "chain"), "--train.no-progress",
                                        "--train.video-frames", "0", "--train.export-texture-size", "256"])
        fid = score_glb(os.path.join(generate(cfg), "export", "model.glb"), "cube", "red", seed=0)
        assert fid.accuracy <= 0.02 and fid.completeness <= 0.025 and fid.largest_piece >= 0.98, fid
        assert fid.chromaticity_distance <= 0.06 and 0.85 <= fid.luminance_ratio <= 1.15 and fid.face_spread < 10, fid


@pytest.mark.slow
def test_gaussians_blue_torus_meets_the_fidelity_goals(tmp_path):
    """`engine generate "a blue torus" --renderer gaussians` on the learned prior (the defaults, seed 0) exports a GLB
    within issue #17's geometry and albedo bounds (bench_fidelity.py, session 44: 0.013 / 0.016 m, one piece,
    chromaticity 0.018, luminance 0.90)."""
    from engine.cli import build_generate_config
    from engine.export.fidelity import score_glb
    from engine.train import generate

    cfg, _ = build_generate_config(["a blue torus", "--renderer", "gaussians", "--out", str(tmp_path / "run"),
                                    "--train.no-progress", "--train.video-frames", "0",
                                    "--train.export-texture-size", "256"])
    fid = score_glb(os.path.join(generate(cfg), "export", "model.glb"), "torus", "blue", seed=0)
    assert fid.accuracy <= 0.02 and fid.completeness <= 0.025 and fid.largest_piece >= 0.98, fid
    assert fid.chromaticity_distance <= 0.06 and 0.85 <= fid.luminance_ratio <= 1.15, fid


def test_uv_textured_mesh_bakes_its_own_texture_texel_for_texel():
    """A fixed mesh with UV-texture materials exports by looking each texel up at its exact UV: a random 16x16
    texture on a quad spanning UV [0,1]^2 comes back texel for texel (the nearest-vertex lookup it replaces gave
    four colours)."""
    from engine.export import ExportOptions, bake_scene
    from engine.export.bake import linear_to_srgb
    from renderers.mesh import Mesh, MeshConfig

    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # glTF: v = 0 is the top row
    scene = Mesh.from_arrays(MeshConfig(material="uv", texture_resolution=16), v, f, uv, torch.Generator())
    with torch.no_grad():
        scene.tex_albedo.copy_(torch.randn(scene.tex_albedo.shape, generator=torch.Generator().manual_seed(0)) * 2)
    baked = bake_scene(scene, ExportOptions(texture_size=16))
    expected = linear_to_srgb(torch.sigmoid(scene.tex_albedo.detach())[0].numpy().astype(np.float64)) * 255
    err = np.abs(baked.textures.base_color.astype(np.float64) - expected)
    assert np.median(err) < 1.0 and np.percentile(err, 90) < 4.0, (np.median(err), err.max())
    assert len(np.unique(baked.textures.base_color.reshape(-1, 3), axis=0)) > 100
