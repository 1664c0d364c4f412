"""A binary glTF 2.0 (GLB) writer for one textured PBR mesh, written by hand (renderers.md §5.4).

Layout: 12-byte header ("glTF", 2, length), a JSON chunk padded with spaces, a BIN chunk padded with zeros; every
bufferView starts on a 4-byte boundary. The primitive has POSITION (with min/max), NORMAL, TANGENT (xyz unit,
w = ±1), TEXCOORD_0 and uint32 indices. The material wires
- pbrMetallicRoughness.baseColorTexture          ← base colour PNG (sRGB)
- pbrMetallicRoughness.metallicRoughnessTexture  ← ORM PNG (linear; G roughness, B metallic)
- occlusionTexture                               ← the same ORM PNG (R channel)
- normalTexture                                  ← tangent-space normal PNG (OpenGL convention)
with factors 1, so the textures hold the values. Images are embedded as PNG bufferViews.
"""

import io
import json
import struct

import numpy as np

GL_FLOAT, GL_UNSIGNED_INT = 5126, 5125
GL_ARRAY_BUFFER, GL_ELEMENT_ARRAY_BUFFER = 34962, 34963
GL_LINEAR, GL_LINEAR_MIPMAP_LINEAR, GL_REPEAT = 9729, 9987, 10497


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


class _Builder:
    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        v = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        self.blob += data
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, arr: np.ndarray, kind: str, component: int, target: int, minmax: bool = False) -> int:
        dtype = "<f4" if component == GL_FLOAT else "<u4"
        data = np.ascontiguousarray(arr, dtype=dtype)
        acc = {"bufferView": self.view(data.tobytes(), target), "componentType": component,
               "count": int(data.shape[0]), "type": kind}
        if minmax:
            acc["min"] = [float(x) for x in data.reshape(data.shape[0], -1).min(0)]
            acc["max"] = [float(x) for x in data.reshape(data.shape[0], -1).max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def write_glb(path: str, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, tangents: np.ndarray,
              uv: np.ndarray, base_color_png: bytes, orm_png: bytes, normal_png: bytes, name: str = "asset",
              extras: dict | None = None) -> None:
    """Write ``path`` (GLB). Arrays: vertices/normals [V,3], tangents [V,4], uv [V,2] (glTF, top-left origin),
    faces [F,3] counter-clockwise from outside."""
    b = _Builder()
    n = normals / np.linalg.norm(normals, axis=-1, keepdims=True)
    t = tangents.astype(np.float64).copy()
    t[:, :3] /= np.linalg.norm(t[:, :3], axis=-1, keepdims=True)
    attributes = {
        "POSITION": b.accessor(vertices, "VEC3", GL_FLOAT, GL_ARRAY_BUFFER, minmax=True),
        "NORMAL": b.accessor(n, "VEC3", GL_FLOAT, GL_ARRAY_BUFFER),
        "TANGENT": b.accessor(t, "VEC4", GL_FLOAT, GL_ARRAY_BUFFER),
        "TEXCOORD_0": b.accessor(uv, "VEC2", GL_FLOAT, GL_ARRAY_BUFFER),
    }
    indices = b.accessor(faces.reshape(-1), "SCALAR", GL_UNSIGNED_INT, GL_ELEMENT_ARRAY_BUFFER)
    images = []
    for img_name, data in (("baseColor", base_color_png), ("orm", orm_png), ("normal", normal_png)):
        images.append({"name": img_name, "mimeType": "image/png", "bufferView": b.view(data)})
    gltf = {
        "asset": {"version": "2.0", "generator": "Distillery engine export"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                                  "mode": 4}]}],
        "materials": [{
            "name": f"{name}_material",
            "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicRoughnessTexture": {"index": 1},
                                     "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 1.0,
                                     "roughnessFactor": 1.0},
            "normalTexture": {"index": 2, "scale": 1.0},
            "occlusionTexture": {"index": 1, "strength": 1.0},
        }],
        "samplers": [{"magFilter": GL_LINEAR, "minFilter": GL_LINEAR_MIPMAP_LINEAR, "wrapS": GL_REPEAT,
                      "wrapT": GL_REPEAT}],
        "textures": [{"sampler": 0, "source": i} for i in range(3)],
        "images": images,
        "accessors": b.accessors,
        "bufferViews": b.views,
        "buffers": [{"byteLength": len(b.blob)}],
    }
    if extras:
        gltf["asset"]["extras"] = extras
    while len(b.blob) % 4:
        b.blob.append(0)
    gltf["buffers"][0]["byteLength"] = len(b.blob)
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(b.blob)
    from engine.outputs import atomic_write
    with atomic_write(path, "wb") as f:  # a kill or a full disk never leaves a broken GLB under its name
        f.write(struct.pack("<4sII", b"glTF", 2, total))
        f.write(struct.pack("<I4s", len(js), b"JSON"))
        f.write(js)
        f.write(struct.pack("<I4s", len(b.blob), b"BIN\x00"))
        f.write(bytes(b.blob))


def read_glb_json(path: str) -> dict:
    """The JSON chunk of a GLB (for structural checks)."""
    with open(path, "rb") as f:
        magic, version, _ = struct.unpack("<4sII", f.read(12))
        if magic != b"glTF" or version != 2:
            raise ValueError(f"{path} is not a glTF 2.0 binary")
        length, kind = struct.unpack("<I4s", f.read(8))
        if kind != b"JSON":
            raise ValueError(f"{path}: the first chunk is not JSON")
        return json.loads(f.read(length))
