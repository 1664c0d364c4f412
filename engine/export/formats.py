"""OBJ+MTL and USD/USDZ (UsdPreviewSurface) writers for a baked mesh; textures are PNG files in a folder beside.

OBJ: ``vt`` holds (u, 1 - v) (OBJ's v origin is bottom-left). The MTL wires ``map_Kd`` (base colour) and, as the
de-facto PBR extension keys, ``map_Pr`` (roughness), ``map_Pm`` (metallic) and ``norm``/``map_Bump`` (tangent-space
normal map); Blender's OBJ importer reads map_Kd, map_Pr, map_Pm and map_Bump (as a normal map). Only ``map_Kd`` is
portable everywhere, hence also the GLB and the loose textures.

USD: a Y-up (or Z-up), metersPerUnit = 1 stage with /Asset (default prim, Xform) → Mesh (points, normals,
primvars:st = (u, 1 - v)) bound to /Asset/Looks/Material: a UsdPreviewSurface fed by UsdUVTexture nodes over a
UsdPrimvarReader_float2("st"): diffuseColor ← albedo.rgb (sRGB), roughness ← orm.g, metallic ← orm.b,
occlusion ← orm.r (raw), normal ← normal.rgb (raw, scale 2, bias −1). USDZ packages the same layer and its PNGs.
"""

import os
import shutil
import tempfile

import numpy as np


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, uv: np.ndarray,
              textures_rel: str, name: str = "asset") -> str:
    """Write ``path`` (.obj) and its .mtl beside it; ``textures_rel`` is the texture folder relative to the .obj."""
    base = os.path.splitext(path)[0]
    mtl_name = os.path.basename(base) + ".mtl"
    tex = textures_rel.rstrip("/") + "/" if textures_rel else ""
    from engine.outputs import atomic_write
    with atomic_write(base + ".mtl") as f:
        f.write(f"# Distillery export\nnewmtl {name}_material\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
                f"Ks 0.000 0.000 0.000\nd 1.0\nillum 2\nmap_Kd {tex}albedo.png\nmap_Pr {tex}roughness.png\n"
                f"map_Pm {tex}metallic.png\nnorm {tex}normal.png\nmap_Bump {tex}normal.png\n")
    vt = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1)
    idx = faces + 1
    lines = [f"# Distillery export: {len(vertices)} vertices, {len(faces)} faces, +Y up, metres\n",
             f"mtllib {mtl_name}\no {name}\n",
             "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices),
             "".join(f"vt {u:.6f} {v:.6f}\n" for u, v in vt),
             "".join(f"vn {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in normals),
             f"usemtl {name}_material\ns 1\n",
             "".join(f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}\n" for a, b, c in idx)]
    with atomic_write(path) as f:
        f.writelines(lines)
    return base + ".mtl"


def _texture_node(stage, UsdShade, Sdf, path: str, file: str, st_output, color_space: str):
    node = UsdShade.Shader.Define(stage, path)
    node.CreateIdAttr("UsdUVTexture")
    node.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(file)
    node.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(color_space)
    node.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
    node.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
    node.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st_output)
    return node


def write_usd(path: str, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, uv: np.ndarray,
              textures_rel: str, up: str = "y", name: str = "asset") -> None:
    """Write a .usd/.usda/.usdc layer whose textures are ``textures_rel``/{albedo,orm,normal}.png."""
    try:
        from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, Vt
    except ImportError:
        from engine.export.errors import ExportError
        raise ExportError("USD export needs usd-core: pip install usd-core (or the project's [usd] extra)") from None
    if os.path.exists(path):
        os.remove(path)
    stage = Usd.Stage.CreateNew(path)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z if up == "z" else UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Asset")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind("component")
    mesh = UsdGeom.Mesh.Define(stage, "/Asset/Mesh")
    mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(vertices, dtype=np.float32)))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.ascontiguousarray(faces.reshape(-1), dtype=np.int32)))
    mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(normals, dtype=np.float32)))
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    lo, hi = vertices.min(0), vertices.max(0)
    mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]))
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
    st.Set(Vt.Vec2fArray.FromNumpy(np.ascontiguousarray(np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1), dtype=np.float32)))

    mat_path = "/Asset/Looks/Material"
    material = UsdShade.Material.Define(stage, mat_path)
    surface = UsdShade.Shader.Define(stage, f"{mat_path}/PreviewSurface")
    surface.CreateIdAttr("UsdPreviewSurface")
    surface.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(0)
    material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
    reader = UsdShade.Shader.Define(stage, f"{mat_path}/stReader")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    varname = material.CreateInput("frame:stPrimvarName", Sdf.ValueTypeNames.Token)
    varname.Set("st")
    reader.CreateInput("varname", Sdf.ValueTypeNames.Token).ConnectToSource(varname)
    st_out = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
    tex = "./" + (textures_rel.rstrip("/") + "/" if textures_rel else "")  # "./": anchored to the layer
    albedo = _texture_node(stage, UsdShade, Sdf, f"{mat_path}/albedoTexture", f"{tex}albedo.png", st_out, "sRGB")
    orm = _texture_node(stage, UsdShade, Sdf, f"{mat_path}/ormTexture", f"{tex}orm.png", st_out, "raw")
    nrm = _texture_node(stage, UsdShade, Sdf, f"{mat_path}/normalTexture", f"{tex}normal.png", st_out, "raw")
    nrm.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2, 2, 2, 1))
    nrm.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1, -1, -1, 0))
    F3, F1 = Sdf.ValueTypeNames.Float3, Sdf.ValueTypeNames.Float
    surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
        albedo.CreateOutput("rgb", F3))
    surface.CreateInput("roughness", F1).ConnectToSource(orm.CreateOutput("g", F1))
    surface.CreateInput("metallic", F1).ConnectToSource(orm.CreateOutput("b", F1))
    surface.CreateInput("occlusion", F1).ConnectToSource(orm.CreateOutput("r", F1))
    surface.CreateInput("normal", Sdf.ValueTypeNames.Normal3f).ConnectToSource(nrm.CreateOutput("rgb", F3))
    UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
    stage.GetRootLayer().Save()


def write_usdz(path: str, textures_dir: str, **mesh_kwargs) -> None:
    """Package a USD layer and its PNGs into ``path`` (.usdz)."""
    from pxr import Sdf, UsdUtils

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(textures_dir, os.path.join(tmp, "textures"))
        layer = os.path.join(tmp, os.path.splitext(os.path.basename(path))[0] + ".usdc")
        write_usd(layer, textures_rel="textures", **mesh_kwargs)
        tmp_out = os.path.join(tmp, "out.usdz")
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(layer), tmp_out):
            raise RuntimeError(f"usd-core could not package {path}")
        from engine.outputs import atomic_path
        with atomic_path(path) as final_tmp:  # the package is whole at its name or not there at all
            shutil.copyfile(tmp_out, final_tmp)
