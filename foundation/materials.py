"""The built-in materials world: tileable PBR materials with canonical, documented ground truth (issue #16).

As foundation/shapes.py is for objects, this is the world `engine material` runs and is *measured* on with
``--prior materials``. Everything here is independent of the renderers, so a result can be checked against it.

A material is one tile (texture coordinates u, v in [0,1), u to the right, v down, glTF's convention) made of:
- a pattern, the mask m(u,v) in [0,1] of the primary colour (the rest is white):
  - plain: m = 1 everywhere;
  - checker: 4x4 cells per tile, m = 1 where floor(4u) + floor(4v) is even;
  - stripes: 4 stripes per tile along v (they vary with u), m = 1 where frac(4u) < 1/2;
  - dots: a 4x4 grid, one disc of radius 0.3 cell (0.075 tile) centred in each cell;
- a primary colour from the shapes world's six (foundation/shapes.py COLOURS, sRGB) on white (sRGB 245, 245, 245);
- a finish, uniform over the tile: matte (roughness 0.8, metallic 0), glossy (roughness 0.15, metallic 0),
  metallic (roughness 0.3, metallic 1);
- "embossed": the pattern is raised by EMBOSS_HEIGHT in the height map (0 elsewhere, edges softened by a one-cell
  box blur of width 1/32 tile); otherwise the height is 0 and the normal map flat.

Masks are area-averaged over 4x4 sub-texel samples (anti-aliased). A prompt names at most one colour, one pattern,
one finish and optionally "embossed", among filler words ("a", "glossy red checker material", "tileable", ...); a
missing word means "any" (the prior keeps every material matching the words given), except "embossed", whose
absence means flat. A word outside the vocabulary and the filler list is refused with the vocabulary.

``evaluate`` measures learned maps against the truth: colour clusters, roughness/metallic means, period, seam.
"""

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from foundation.shapes import COLOURS

PATTERNS = ("plain", "checker", "stripes", "dots")
FINISHES: dict[str, tuple[float, float]] = {"matte": (0.8, 0.0), "glossy": (0.15, 0.0), "metallic": (0.3, 1.0)}
"""finish -> (roughness, metallic)."""
WHITE = (245, 245, 245)
EMBOSS_HEIGHT = 0.01
"""Height of the raised pattern in metres for a tile of 1 m (renderers/material.py's tile extent)."""
CELLS = 4
FILLER = frozenset("a an the of with and in material materials texture textures surface pattern patterned tileable "
                   "seamless pbr photo dslr high quality detailed view front side back overhead".split())
PATTERN_WORDS = {"plain": "plain", "checker": "checker", "checkered": "checker", "checkerboard": "checker",
                 "stripes": "stripes", "stripe": "stripes", "striped": "stripes", "dots": "dots", "dot": "dots",
                 "dotted": "dots", "polka": "dots"}


@dataclass(frozen=True)
class MaterialSpec:
    """One material of the world (all fields set) or a prompt's partial description (None = any)."""

    colour: str | None = None
    pattern: str | None = None
    finish: str | None = None
    embossed: bool = False

    def words(self) -> tuple[str, ...]:
        return tuple(w for w in (self.colour, self.pattern, self.finish, "embossed" if self.embossed else None) if w)

    def matches(self, other: "MaterialSpec") -> bool:
        """Whether the complete material ``other`` fits this (partial) description."""
        return all(getattr(self, k) in (None, getattr(other, k)) for k in ("colour", "pattern", "finish")) \
            and self.embossed == other.embossed

    @property
    def name(self) -> str:
        return " ".join(self.words()) or "any material"


def vocabulary() -> str:
    return (f"colours {', '.join(COLOURS)}; patterns {', '.join(PATTERNS)}; finishes {', '.join(FINISHES)}; "
            "and \"embossed\" (e.g. \"a glossy red checker material\")")


def parse_prompt(prompt: str) -> MaterialSpec:
    """The (partial) material a prompt names. Raises ValueError naming the vocabulary for an unknown word, two
    different words of one kind, or a prompt with no word of the world."""
    colours, patterns, finishes, embossed, unknown = set(), set(), set(), False, []
    for raw in prompt.lower().replace(",", " ").split():
        w = raw.strip(".;:!?\"'()-")
        if not w or w in FILLER:
            continue
        if w in COLOURS:
            colours.add(w)
        elif w in PATTERN_WORDS:
            patterns.add(PATTERN_WORDS[w])
        elif w in FINISHES or w in ("metal", "shiny", "rough"):
            finishes.add({"metal": "metallic", "shiny": "glossy", "rough": "matte"}.get(w, w))
        elif w in ("embossed", "raised"):
            embossed = True
        else:
            unknown.append(w)
    if unknown:
        raise ValueError(f"the materials prior does not know {', '.join(repr(w) for w in unknown)} in {prompt!r}. "
                         f"Vocabulary: {vocabulary()}")
    for kind, found in (("colour", colours), ("pattern", patterns), ("finish", finishes)):
        if len(found) > 1:
            raise ValueError(f"the materials world serves one {kind} per prompt; {prompt!r} names "
                             f"{', '.join(sorted(found))}")
    if not (colours or patterns or finishes or embossed):
        raise ValueError(f"the materials prior knows no word of {prompt!r}. Vocabulary: {vocabulary()}")
    first = lambda s: next(iter(s)) if s else None  # noqa: E731
    return MaterialSpec(first(colours), first(patterns), first(finishes), embossed)


def catalogue() -> list[MaterialSpec]:
    """Every complete material of the world (6 colours x 4 patterns x 3 finishes x flat/embossed = 144)."""
    return [MaterialSpec(c, p, f, e) for c, p, f, e in itertools.product(COLOURS, PATTERNS, FINISHES, (False, True))]


# -- ground-truth maps -------------------------------------------------------------------------------------------------
def pattern_mask(pattern: str, size: int, supersample: int = 4) -> Tensor:
    """[size, size] area-averaged mask of the primary colour (rows = v, columns = u)."""
    return _pattern_mask(pattern, size, supersample).clone()


@functools.lru_cache(maxsize=32)
def _pattern_mask(pattern: str, size: int, supersample: int) -> Tensor:
    n = size * supersample
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    v, u = torch.meshgrid(c, c, indexing="ij")
    match pattern:
        case "plain":
            m = torch.ones_like(u)
        case "checker":
            m = ((torch.floor(CELLS * u) + torch.floor(CELLS * v)) % 2 == 0).double()
        case "stripes":
            m = (torch.frac(CELLS * u) < 0.5).double()
        case "dots":
            du, dv = torch.frac(CELLS * u) - 0.5, torch.frac(CELLS * v) - 0.5
            m = ((du * du + dv * dv) < 0.3 ** 2).double()
        case _:
            raise ValueError(f"unknown pattern {pattern!r}; the materials world has {', '.join(PATTERNS)}")
    return F.avg_pool2d(m[None, None], supersample)[0, 0].float()


def _box_blur_wrap(x: Tensor, width: int) -> Tensor:
    """Periodic box blur of [S,S] over ``width`` texels in each direction."""
    if width <= 1:
        return x
    k = torch.ones(1, 1, width, width, dtype=x.dtype) / width ** 2
    lo, hi = (width - 1) // 2, width // 2
    y = F.pad(x[None, None], (lo, hi, lo, hi), mode="circular")
    return F.conv2d(y, k)[0, 0]


def ground_truth(spec: MaterialSpec, size: int) -> dict[str, Tensor]:
    """The material's maps at ``size`` texels: basecolor (sRGB [S,S,3] in [0,1]), albedo (linear), roughness,
    metallic and height ([S,S]; height in units of EMBOSS_HEIGHT, so in [0,1])."""
    if None in (spec.colour, spec.pattern, spec.finish):
        raise ValueError(f"ground truth needs a complete material, got {spec}")
    m = pattern_mask(spec.pattern, size)
    prim = torch.tensor(COLOURS[spec.colour], dtype=torch.float32) / 255
    white = torch.tensor(WHITE, dtype=torch.float32) / 255
    srgb = m[..., None] * prim + (1 - m[..., None]) * white  # mixing in sRGB: the mask is a coverage of texels
    r, met = FINISHES[spec.finish]
    height = _box_blur_wrap(m, max(1, size // 32)) if spec.embossed and spec.pattern != "plain" else torch.zeros_like(m)
    return {"basecolor": srgb, "albedo": srgb_to_linear(srgb), "roughness": torch.full_like(m, r),
            "metallic": torch.full_like(m, met), "height": height, "mask": m}


def srgb_to_linear(x: Tensor) -> Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


# -- measures ---------------------------------------------------------------------------------------------------------
def dominant_frequency(img: np.ndarray) -> tuple[int, int] | None:
    """(fu, fv): the strongest non-DC Fourier component of a periodic [S,S] map in cycles per tile (|fu| >= |fv|
    sorted form), or None for a (near-)constant map."""
    x = img - img.mean()
    if float(np.abs(x).max()) < 1e-3:
        return None
    p = np.abs(np.fft.fft2(x)) ** 2
    p[0, 0] = 0
    i, j = np.unravel_index(int(np.argmax(p)), p.shape)
    S = img.shape[0]
    fv, fu = (i if i <= S // 2 else i - S), (j if j <= S // 2 else j - S)
    a, b = sorted((abs(fu), abs(fv)), reverse=True)
    return int(a), int(b)


def seam_ratio(img: np.ndarray, lines: int = CELLS) -> float:
    """The seam measure: the mean |difference| across the wrap-around edges (last column to first, last row to
    first) over the mean |difference| across the interior grid lines at the same phase of the world's 4-per-tile
    grid (texel k*S/4 - 1 to k*S/4, k = 1..3, both directions). Every pattern of the world repeats on that grid, so
    a map without a seam scores about 1; a visible seam scores well above. (For S not divisible by 4 every interior
    line is used.)"""
    x = img.astype(np.float64).reshape(img.shape[0], img.shape[1], -1)
    S = x.shape[0]
    ks = [k * S // lines for k in range(1, lines)] if S % lines == 0 else list(range(1, S))
    inner = np.mean([np.abs(x[k] - x[k - 1]).mean() for k in ks] + [np.abs(x[:, k] - x[:, k - 1]).mean() for k in ks])
    wrap = (np.abs(x[0] - x[-1]).mean() + np.abs(x[:, 0] - x[:, -1]).mean()) / 2
    return float(wrap / max(inner, 1e-3 / 255))


def _interior(mask: np.ndarray, value: float) -> np.ndarray:
    """Texels whose whole 3x3 neighbourhood (periodic) has the mask equal to ``value`` (edges excluded)."""
    sel = np.abs(mask - value) < 1e-3
    out = sel.copy()
    for di, dj in itertools.product((-1, 0, 1), repeat=2):
        out &= np.roll(np.roll(sel, di, 0), dj, 1)
    return out


def evaluate(maps: dict[str, np.ndarray], spec: MaterialSpec) -> dict:
    """Learned maps (basecolor sRGB [S,S,3] in [0,1], roughness/metallic [S,S]) against the truth of ``spec``.

    Returns colour error and spread per cluster (sRGB 0-255 units: the distance of the cluster's mean to the true
    colour, the RMS distance of its texels to their mean), roughness/metallic mean and error, the dominant
    frequency found vs the true one, and the seam ratio of the base colour.
    """
    S = maps["basecolor"].shape[0]
    gt = {k: v.numpy() for k, v in ground_truth(spec, S).items()}
    out: dict = {"material": spec.name}
    base = maps["basecolor"].astype(np.float64) * 255
    clusters = [("primary", 1.0, COLOURS[spec.colour])] + ([("white", 0.0, WHITE)] if spec.pattern != "plain" else [])
    errs, spreads = [], []
    for name, value, colour in clusters:
        sel = _interior(gt["mask"], value)
        px = base[sel]
        mean = px.mean(0)
        err = float(np.linalg.norm(mean - np.array(colour)))
        spread = float(np.sqrt(((px - mean) ** 2).sum(-1).mean()))
        out[f"{name}_rgb"] = [round(float(c), 1) for c in mean]
        out[f"{name}_error"], out[f"{name}_spread"] = round(err, 2), round(spread, 2)
        errs.append(err)
        spreads.append(spread)
    out["colour_error"], out["colour_spread"] = round(max(errs), 2), round(max(spreads), 2)
    r_true, m_true = FINISHES[spec.finish]
    for key, true in (("roughness", r_true), ("metallic", m_true)):
        mean = float(maps[key].mean())
        out[f"{key}_mean"], out[f"{key}_error"] = round(mean, 3), round(abs(mean - true), 3)
    if "height" in maps and spec.pattern != "plain":  # relief of the pattern over the white, in EMBOSS_HEIGHT units
        h = maps["height"].astype(np.float64)
        relief = h[_interior(gt["mask"], 1.0)].mean() - h[_interior(gt["mask"], 0.0)].mean()
        out["relief"], out["true_relief"] = round(float(relief), 3), 1.0 if spec.embossed else 0.0
    if "normal" in maps:  # the relief in the normal map, where the truth is tilted
        true_n = tangent_normals(gt_height_tensor(spec, S), None, True)[0].permute(1, 2, 0).numpy()
        n = maps["normal"].astype(np.float64)
        edge = np.linalg.norm(true_n[..., :2], axis=-1) > 0.1
        tilt = np.linalg.norm(n[..., :2], axis=-1)
        if edge.any():
            out["normal_cos_edges"] = round(float((n[edge] * true_n[edge]).sum(-1).mean()), 3)
        out["normal_tilt_edges"] = round(float(tilt[edge].mean()), 3) if edge.any() else 0.0
        out["normal_tilt_flat"] = round(float(tilt[~edge].mean()), 3)
    lum = base @ np.array([0.2126, 0.7152, 0.0722])
    found, true = dominant_frequency(lum), dominant_frequency(gt["basecolor"] @ np.array([0.2126, 0.7152, 0.0722]))
    out["frequency"], out["true_frequency"] = found, true
    out["period_ok"] = found == true if true is not None else found is None or _weak_pattern(lum)
    out["seam_ratio"] = round(seam_ratio(maps["basecolor"]), 3)
    return out


def gt_height_tensor(spec: MaterialSpec, size: int) -> Tensor:
    """[1,S,S] true height (units of EMBOSS_HEIGHT)."""
    return ground_truth(spec, size)["height"][None]


def _weak_pattern(lum: np.ndarray) -> bool:
    """A plain material's map: no component above 2 sRGB levels of amplitude."""
    x = lum - lum.mean()
    amp = np.abs(np.fft.fft2(x)) / x.size
    return bool(2 * amp.max() < 2.0)


def describe(result: dict) -> str:
    """One line of an ``evaluate`` result."""
    return (f"{result['material']}: colour error {result['colour_error']:.1f} spread {result['colour_spread']:.1f} "
            f"(sRGB levels), roughness {result['roughness_mean']:.2f}, metallic {result['metallic_mean']:.2f}, "
            f"frequency {result['frequency']} (true {result['true_frequency']}), seam ratio {result['seam_ratio']:.2f}")


__all__ = ["PATTERNS", "FINISHES", "WHITE", "EMBOSS_HEIGHT", "MaterialSpec", "parse_prompt", "catalogue",
           "pattern_mask", "ground_truth", "evaluate", "dominant_frequency", "seam_ratio", "describe"]


TILE = 1.0
"""Side of one tile in metres."""


def tangent_normals(height: Tensor, detail: Tensor | None, tileable: bool) -> Tensor:
    """Tangent-space unit normals [K,3,S,S] (OpenGL convention, see the module docstring) of heights [K,S,S]
    (units of EMBOSS_HEIGHT) plus an optional detail [K,2,S,S]."""
    S = height.shape[-1]
    h = height * EMBOSS_HEIGHT
    scale = S / (2.0 * TILE)  # central difference over two texels, per metre
    if tileable:
        dx = (torch.roll(h, -1, -1) - torch.roll(h, 1, -1)) * scale
        dz = (torch.roll(h, -1, -2) - torch.roll(h, 1, -2)) * scale
    else:
        p = F.pad(h[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
        dx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * scale
        dz = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) * scale
    n = torch.stack([-dx, dz, torch.ones_like(dx)], 1)
    if detail is not None:
        n = n + F.pad(detail, (0, 0, 0, 0, 0, 1))
    return F.normalize(n, dim=1)
