"""The files of a completed `engine material` run (issue #16), written into the run folder.

- basecolor.png (sRGB, 8 bit), roughness.png and metallic.png (linear, 8 bit grey), orm.png (linear: R occlusion = 1,
  G roughness, B metallic; glTF's packing, conventions.md §3.1), normal.png (tangent space, OpenGL "green up"; with
  ``normal_map = "directx"`` G is flipped and an OpenGL copy normal_gl.png is written for the MaterialX, USD and glTF
  files, which expect OpenGL), height.png (16-bit grey: 0..65535 = 0..EMBOSS_HEIGHT metres per 1 m tile, clamped);
- material.mtlx: a MaterialX standard_surface wired to the maps (image nodes with periodic addressing, a normalmap
  node), written with the ``materialx`` package and checked with its own ``validate()``;
- material.usda: a UsdPreviewSurface material wired to the same maps (usd-core), bound to a 2x2-tile sample quad;
- preview.glb: a sphere (radius 0.5 m, resting on the plane) and a 2 m x 2 m plane carrying the tile 2x2 times;
- preview.png: the sphere and the plane ray-traced under three directional lights and a dim white environment;
- material.json: sizes, conventions, and (materials world, complete prompts) the evaluation against ground truth.

Every file is written to a temporary name first; all are renamed into place only once every one is written.
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from foundation.materials import EMBOSS_HEIGHT

PREVIEW_SIZE = (384, 256)


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    from engine.export.gltf import png_bytes
    return png_bytes(img)


def map_images(maps: dict[str, np.ndarray], normal_map: str) -> dict[str, np.ndarray]:
    """The PNG images (uint8 / uint16 arrays) of exported maps (renderers.material.MaterialScene.export_maps)."""
    n_gl = _u8(maps["normal"] * 0.5 + 0.5)
    rough, metal = _u8(maps["roughness"]), _u8(maps["metallic"])
    out = {"basecolor.png": _u8(maps["basecolor"]), "roughness.png": rough, "metallic.png": metal,
           "orm.png": np.stack([np.full_like(rough, 255), rough, metal], -1),
           "height.png": (np.clip(maps["height"], 0.0, 1.0) * 65535 + 0.5).astype(np.uint16)}
    if normal_map == "directx":
        n_dx = n_gl.copy()
        n_dx[..., 1] = 255 - n_dx[..., 1]
        out["normal.png"], out["normal_gl.png"] = n_dx, n_gl
    else:
        out["normal.png"] = n_gl
    return out


# -- MaterialX ---------------------------------------------------------------------------------------------------------
def materialx_document(normal_file: str = "normal.png"):
    """A MaterialX document: standard_surface "SR_material" in surfacematerial "M_material", maps wired by file name."""
    import MaterialX as mx

    doc = mx.createDocument()
    ng = doc.addNodeGraph("NG_material")

    def image(name: str, file: str, kind: str, colorspace: str = ""):
        node = ng.addNode("image", name, kind)
        f = node.addInput("file", "filename")
        f.setValueString(file)
        if colorspace:
            f.setColorSpace(colorspace)
        for k in ("uaddressmode", "vaddressmode"):
            node.addInput(k, "string").setValueString("periodic")
        return node

    def output(name: str, node, kind: str):
        out = ng.addOutput(name, kind)
        out.setNodeName(node.getName())
        return out

    base = image("basecolor", "basecolor.png", "color3", "srgb_texture")
    rough = image("roughness", "roughness.png", "float")
    metal = image("metallic", "metallic.png", "float")
    nrm = image("normal", normal_file, "vector3")
    nmap = ng.addNode("normalmap", "normalmap", "vector3")
    nmap.addInput("in", "vector3").setNodeName(nrm.getName())
    outs = {"base_color": output("out_basecolor", base, "color3"),
            "specular_roughness": output("out_roughness", rough, "float"),
            "metalness": output("out_metallic", metal, "float"),
            "normal": output("out_normal", nmap, "vector3")}
    sr = doc.addNode("standard_surface", "SR_material", "surfaceshader")
    sr.addInput("base", "float").setValue(1.0)
    for name, out in outs.items():
        kind = "color3" if name == "base_color" else "vector3" if name == "normal" else "float"
        inp = sr.addInput(name, kind)
        inp.setNodeGraphString(ng.getName())
        inp.setOutputString(out.getName())
    mat = doc.addNode("surfacematerial", "M_material", "material")
    mat.addInput("surfaceshader", "surfaceshader").setNodeName(sr.getName())
    return doc


def validate_materialx(doc) -> tuple[bool, str]:
    """MaterialX's own validate() against its standard libraries."""
    import MaterialX as mx

    lib = mx.createDocument()
    mx.loadLibraries(mx.getDefaultDataLibraryFolders(), mx.getDefaultDataSearchPath(), lib)
    doc.setDataLibrary(lib)
    ok, message = doc.validate()
    return bool(ok), message


def write_materialx(path: str, normal_file: str = "normal.png") -> None:
    import MaterialX as mx

    doc = materialx_document(normal_file)
    ok, message = validate_materialx(doc)
    if not ok:
        raise RuntimeError(f"the MaterialX document does not validate: {message}")
    doc.setDataLibrary(None)
    mx.writeToXmlFile(doc, path)


# -- USD ---------------------------------------------------------------------------------------------------------------
def write_usd_material(path: str, normal_file: str = "normal.png") -> None:
    """A .usda layer: /Material (UsdPreviewSurface fed by UsdUVTexture nodes) bound to /Sample, a 2 m quad whose
    st runs over 2x2 tiles (wrap "repeat")."""
    from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, Vt

    stage = Usd.Stage.CreateNew(path)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Root")
    stage.SetDefaultPrim(root.GetPrim())
    mat = UsdShade.Material.Define(stage, "/Root/Material")
    surf = UsdShade.Shader.Define(stage, "/Root/Material/PreviewSurface")
    surf.CreateIdAttr("UsdPreviewSurface")
    surf.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(0)
    mat.CreateSurfaceOutput().ConnectToSource(surf.ConnectableAPI(), "surface")
    reader = UsdShade.Shader.Define(stage, "/Root/Material/stReader")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
    st = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

    def texture(name: str, file: str, space: str):
        tex = UsdShade.Shader.Define(stage, f"/Root/Material/{name}")
        tex.CreateIdAttr("UsdUVTexture")
        tex.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"./{file}")
        tex.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(space)
        tex.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
        tex.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
        tex.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
        return tex

    F3, F1 = Sdf.ValueTypeNames.Float3, Sdf.ValueTypeNames.Float
    surf.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
        texture("basecolorTexture", "basecolor.png", "sRGB").CreateOutput("rgb", F3))
    surf.CreateInput("roughness", F1).ConnectToSource(texture("roughnessTexture", "roughness.png", "raw")
                                                      .CreateOutput("r", F1))
    surf.CreateInput("metallic", F1).ConnectToSource(texture("metallicTexture", "metallic.png", "raw")
                                                     .CreateOutput("r", F1))
    nrm = texture("normalTexture", normal_file, "raw")
    nrm.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2, 2, 2, 1))
    nrm.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1, -1, -1, 0))
    surf.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(nrm.CreateOutput("rgb", F3))

    quad = UsdGeom.Mesh.Define(stage, "/Root/Sample")
    pts = [(-1, 0, -1), (-1, 0, 1), (1, 0, 1), (1, 0, -1)]
    quad.CreatePointsAttr(Vt.Vec3fArray([Gf.Vec3f(*p) for p in pts]))
    quad.CreateFaceVertexCountsAttr(Vt.IntArray([4]))
    quad.CreateFaceVertexIndicesAttr(Vt.IntArray([0, 1, 2, 3]))
    quad.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(-1, 0, -1), Gf.Vec3f(1, 0, 1)]))
    quad.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    pv = UsdGeom.PrimvarsAPI(quad).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
    pv.Set(Vt.Vec2fArray([Gf.Vec2f(x + 1, 1 - z) for x, _, z in pts]))  # USD's st has v up: v_usd = 1 - v_gltf
    UsdShade.MaterialBindingAPI.Apply(quad.GetPrim()).Bind(mat)
    stage.GetRootLayer().Save()


# -- preview geometry --------------------------------------------------------------------------------------------------
def preview_meshes(lat: int = 24, lon: int = 48) -> dict[str, np.ndarray]:
    """One mesh: a UV sphere (radius 0.5, centre (0, 0.5, 0), u = azimuth from +Z towards +X over one tile, v from
    the north pole) and the plane y = 0 over [-1, 1]^2 with uv = (x + 1, z + 1) (2x2 tiles, the training mapping).
    Faces counter-clockwise from outside."""
    th = np.linspace(0, math.pi, lat + 1)
    ph = np.linspace(0, 2 * math.pi, lon + 1)
    T, P = np.meshgrid(th, ph, indexing="ij")
    n = np.stack([np.sin(T) * np.sin(P), np.cos(T), np.sin(T) * np.cos(P)], -1).reshape(-1, 3)
    v = n * 0.5 + np.array([0.0, 0.5, 0.0])
    uv = np.stack([P / (2 * math.pi), T / math.pi], -1).reshape(-1, 2)
    faces = []
    for i in range(lat):
        for j in range(lon):
            a, b, c, d = i * (lon + 1) + j, (i + 1) * (lon + 1) + j, (i + 1) * (lon + 1) + j + 1, i * (lon + 1) + j + 1
            if i > 0:
                faces.append([a, b, d])
            if i < lat - 1:
                faces.append([d, b, c])
    faces = np.array(faces)
    pv = np.array([[-1, 0, -1], [-1, 0, 1], [1, 0, 1], [1, 0, -1]], dtype=np.float64)
    puv = np.stack([pv[:, 0] + 1, pv[:, 2] + 1], -1)
    pf = np.array([[0, 1, 2], [0, 2, 3]]) + len(v)
    verts = np.concatenate([v, pv])
    normals = np.concatenate([n, np.tile([[0.0, 1.0, 0.0]], (4, 1))])
    return {"vertices": verts, "faces": np.concatenate([faces, pf]), "normals": normals,
            "uv": np.concatenate([uv, puv])}


def write_preview_glb(path: str, images: dict[str, np.ndarray]) -> None:
    from engine.export.bake import tangents
    from engine.export.gltf import write_glb
    from engine.export.mesh import Mesh

    m = preview_meshes()
    tan = tangents(Mesh(m["vertices"], m["faces"], m["normals"], m["uv"]))
    write_glb(path, m["vertices"], m["faces"], m["normals"], tan, m["uv"], _png(images["basecolor.png"]),
              _png(images["orm.png"]), _png(images.get("normal_gl.png", images["normal.png"])),
              name="material_preview", extras={"tile_metres": 1.0})


@torch.no_grad()
def render_preview(maps: dict[str, np.ndarray], tileable: bool = True, size: tuple[int, int] = PREVIEW_SIZE,
                   supersample: int = 2) -> np.ndarray:
    """[H,W,3] uint8: the preview sphere and plane ray-traced (no shadows) under three directional lights (key,
    fill, rim) plus a dim white environment, over a grey backdrop."""
    from renderers import pbr
    from renderers.material import direct_light, sample_maps

    W, H = size[0] * supersample, size[1] * supersample
    eye = torch.tensor([0.0, 1.5, 2.9])
    target = torch.tensor([0.0, 0.35, 0.0])
    fwd = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    up = torch.linalg.cross(right, fwd)
    f = 0.5 * H / math.tan(math.radians(20.0))
    j, i = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = F.normalize(fwd + ((i - W / 2) / f)[..., None] * right - ((j - H / 2) / f)[..., None] * up, dim=-1)
    # sphere (centre c, radius 0.5) and plane hits
    c = torch.tensor([0.0, 0.5, 0.0])
    oc = eye - c
    b = (d * oc).sum(-1)
    disc = b * b - (oc * oc).sum() + 0.25
    t_s = torch.where(disc > 0, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, float("inf")))
    t_p = torch.where(d[..., 1] < -1e-6, -eye[1] / d[..., 1], torch.full_like(b, float("inf")))
    p_p = eye + t_p[..., None] * d
    on_plane = (p_p[..., 0].abs() <= 1) & (p_p[..., 2].abs() <= 1) & torch.isfinite(t_p)
    t_p = torch.where(on_plane, t_p, torch.full_like(t_p, float("inf")))
    sphere = t_s < t_p
    hit = sphere | on_plane
    p = eye + torch.where(sphere, t_s, torch.where(on_plane, t_p, 0.0))[..., None] * d
    ns = F.normalize(p - c, dim=-1)
    phi = torch.atan2(ns[..., 0], ns[..., 2]) % (2 * math.pi)
    theta = torch.acos(ns[..., 1].clamp(-1, 1))
    uv = torch.where(sphere[..., None], torch.stack([phi / (2 * math.pi), theta / math.pi], -1),
                     torch.stack([p[..., 0] + 1, p[..., 2] + 1], -1))
    # tangent frames: T along +u, B towards decreasing v (OpenGL normal maps)
    t_sph = F.normalize(torch.stack([torch.cos(phi), torch.zeros_like(phi), -torch.sin(phi)], -1), dim=-1)
    b_sph = torch.linalg.cross(ns, t_sph)
    N = torch.where(sphere[..., None], ns, torch.tensor([0.0, 1.0, 0.0]))
    Tn = torch.where(sphere[..., None], t_sph, torch.tensor([1.0, 0.0, 0.0]))
    Bn = torch.where(sphere[..., None], b_sph, torch.tensor([0.0, 0.0, -1.0]))
    stack = torch.from_numpy(np.concatenate([maps["basecolor"], maps["roughness"][..., None],
                                             maps["metallic"][..., None], maps["normal"]], -1)).float()
    s = sample_maps(stack.permute(2, 0, 1)[None], uv, tileable)[0]
    albedo = pbr.srgb_to_linear(s[..., 0:3].clamp(0, 1))
    rough, metal = s[..., 3:4].clamp(0.02, 1), s[..., 4:5].clamp(0, 1)
    nt = F.normalize(s[..., 5:8], dim=-1)
    n = F.normalize(nt[..., 0:1] * Tn + nt[..., 1:2] * Bn + nt[..., 2:3] * N, dim=-1)
    v = -d
    rgb = 0.25 * pbr.shade(albedo, rough, metal, n, v, pbr.environment("white", 16))["rgb"]
    for az, el, e in ((35.0, 45.0, 2.2), (-60.0, 25.0, 0.8), (170.0, 35.0, 1.2)):  # key, fill, rim
        a, el_r = math.radians(az), math.radians(el)
        sun = torch.tensor([math.cos(el_r) * math.sin(a), math.sin(el_r), math.cos(el_r) * math.cos(a)])
        rgb = rgb + direct_light(albedo, rough, metal, n, v, sun, torch.tensor(e))
    img = torch.where(hit[..., None], pbr.linear_to_srgb(rgb), torch.tensor([0.55, 0.57, 0.6]))
    img = F.avg_pool2d(img.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
    return _u8(img.numpy())


# -- the run's outputs -------------------------------------------------------------------------------------------------
def _run_config(run_dir: str) -> dict:
    import yaml
    try:
        with open(os.path.join(run_dir, "config.yaml")) as f:
            return yaml.safe_load(f) or {}
    except OSError:
        return {}


def _evaluation(run_dir: str, maps: dict[str, np.ndarray]) -> dict | None:
    """The maps against the materials world's truth, when the run used that prior on a complete prompt."""
    from foundation import materials
    cfg = _run_config(run_dir)
    if (cfg.get("prior") or {}).get("name") != "materials":
        return None
    try:
        spec = materials.parse_prompt(cfg.get("prompt", ""))
    except ValueError:
        return None
    if None in (spec.colour, spec.pattern, spec.finish):
        return None
    return materials.evaluate(maps, spec)


def write_material(run_dir: str, scene, size: int) -> dict[str, str]:
    """Write every material file of ``scene`` at ``size`` texels into ``run_dir``; returns {kind: file name}."""
    from PIL import Image

    maps = scene.export_maps(size)
    images = map_images(maps, scene.cfg.normal_map)
    normal_file = "normal_gl.png" if "normal_gl.png" in images else "normal.png"
    tmp: dict[str, str] = {}

    def target(name: str) -> str:
        base, ext = os.path.splitext(name)
        tmp[name] = os.path.join(run_dir, f".{base}.tmp{ext}")
        return tmp[name]

    try:
        for name, img in images.items():
            Image.fromarray(img).save(target(name))
        write_materialx(target("material.mtlx"), normal_file)
        write_usd_material(target("material.usda"), normal_file)
        write_preview_glb(target("preview.glb"), images)
        Image.fromarray(render_preview(maps, scene.cfg.tileable)).save(target("preview.png"))
        info = {"size": size, "texels": scene.cfg.texels, "tileable": scene.cfg.tileable,
                "normal_map": scene.cfg.normal_map, "tile_metres": 1.0, "height_png_metres": EMBOSS_HEIGHT}
        ev = _evaluation(run_dir, scene.export_maps(scene.cfg.texels))  # measured at the optimised resolution
        if ev is not None:
            info["eval"] = ev
        with open(target("material.json"), "w") as f:
            json.dump(info, f, indent=2, default=str)
    except BaseException:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    for name, path in tmp.items():
        os.replace(path, os.path.join(run_dir, name))
    return {name: name for name in tmp}


__all__ = ["write_material", "map_images", "materialx_document", "validate_materialx", "write_materialx",
           "write_usd_material", "preview_meshes", "write_preview_glb", "render_preview"]
