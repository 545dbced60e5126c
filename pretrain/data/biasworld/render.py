"""Rendering of the bias world: analytic shapes, textures, backgrounds and the painter's algorithm.

Coordinates: an image of S x S pixels spans [0, 1]^2 (x right, y down); pixel j has centre (j + 0.5)
/ S. An object lives in its own local frame (u, v), where its shape fits the disk of radius
EXTENT[shape]. Shapes are signed distances in local units (< 0 inside), so antialiasing is a clip of
the distance in pixels and the object's mask is `sdf <= 0` (coverage >= 0.5).

Determinism across machines: per-pixel work uses only IEEE-exact operations (+, *, /, sqrt, floor,
abs, min/max, compare), never SIMD transcendentals (sin, atan2, exp) whose last bit may change with
the CPU; angles are drawn as rational unit vectors (see `unit`), never through cos/sin.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

F32 = np.float32
Field = np.ndarray  # (h, w) float32 over a crop of the pixel grid
ShapeFn = Callable[
    [Field, Field], tuple[Field, Field | None]
]  # (u, v) -> (sdf, accent mask or None)
TextureFn = Callable[
    [Field, Field, "Instance"], Field | None
]  # -> t in [0, 1] (0: colour c1, 1: c2)


def unit(t: float) -> tuple[float, float]:
    """(cos a, sin a) with a = 2 atan(t), by rational arithmetic; t in [-1, 1] -> |a| <= 90 deg."""
    d = 1.0 + t * t
    return (1.0 - t * t) / d, 2.0 * t / d


def hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    s, v = min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


@dataclass(frozen=True)
class Instance:
    """One object instance placed in an image (all lengths are fractions of the image side)."""

    cls: int  # class index in the variant's vocabulary
    shape: str  # key of SHAPES
    texture: str  # key of TEXTURES
    cx: float
    cy: float
    radius: float  # local unit -> image fraction
    rot: tuple[float, float]  # (cos, sin) of the in-plane rotation
    aspect: float  # sx / sy with sx * sy = 1
    flip: bool  # mirror u
    z: float  # depth; the painter draws larger z first
    c1: tuple[float, float, float]  # RGB base colour
    c2: tuple[float, float, float]  # RGB texture colour
    c3: tuple[float, float, float]  # RGB accent colour (wheels, eyes, ...)
    freq: float  # texture cycles per local unit
    tex_dir: tuple[float, float]  # (cos, sin) of the texture direction
    phase: tuple[float, float]  # texture offset (instance-specific)
    light: tuple[float, float]  # shading gradient (per local unit)


# ----------------------------------------------------------------------------- shapes (local units)


def _len(u: Field, v: Field) -> Field:
    return np.sqrt(u * u + v * v)


def _box(u: Field, v: Field, hw: float, hh: float) -> Field:
    return np.maximum(np.abs(u) - hw, np.abs(v) - hh)


def _disk(u: Field, v: Field, x: float, y: float, r: float) -> Field:
    return _len(u - x, v - y) - r


def _polygon(n: int, apothem: float, start: float) -> ShapeFn:
    """Regular n-gon as the max of n half-plane distances (normals: scalar constants, cast once)."""
    normals = [
        (F32(math.cos(start + 2 * math.pi * k / n)), F32(math.sin(start + 2 * math.pi * k / n)))
        for k in range(n)
    ]

    def sdf(u: Field, v: Field) -> tuple[Field, None]:
        d = u * normals[0][0] + v * normals[0][1]
        for nx, ny in normals[1:]:
            d = np.maximum(d, u * nx + v * ny)
        return d - F32(apothem), None

    return sdf


_triangle = _polygon(3, 0.5, -np.pi / 2 + np.pi)  # a vertex up
_pentagon = _polygon(5, 0.8, np.pi / 2)
_hexagon = _polygon(6, 0.87, 0.0)


def _star4(u: Field, v: Field) -> Field:
    return (np.sqrt(np.abs(u)) + np.sqrt(np.abs(v)) - F32(1.05)) * F32(0.8)


def star(u: Field, v: Field) -> tuple[Field, None]:
    """Eight-pointed star: the union of two concave four-point stars, the second turned 45 deg."""
    h = F32(0.70710678)
    return np.minimum(_star4(u, v), _star4((u + v) * h, (v - u) * h) + F32(0.12)), None


def car(u: Field, v: Field) -> tuple[Field, Field]:
    body, cabin = _box(u, v - 0.1, 1.0, 0.28), _box(u + 0.1, v + 0.35, 0.5, 0.25)
    wheels = np.minimum(_disk(u, v, -0.6, 0.4, 0.25), _disk(u, v, 0.6, 0.4, 0.25))
    window = _box(u + 0.1, v + 0.33, 0.38, 0.15)
    return np.minimum(np.minimum(body, cabin), wheels), (wheels <= 0) | (window <= 0)


def bus(u: Field, v: Field) -> tuple[Field, Field]:
    body = _box(u, v, 1.1, 0.55)
    wheels = np.minimum(_disk(u, v, -0.7, 0.55, 0.22), _disk(u, v, 0.7, 0.55, 0.22))
    windows = _box(u, v + 0.2, 0.95, 0.15) <= 0
    return np.minimum(body, wheels), (wheels <= 0) | windows


def person(u: Field, v: Field) -> tuple[Field, Field]:
    head, torso, legs = (
        _disk(u, v, 0.0, -0.78, 0.22),
        _box(u, v + 0.15, 0.32, 0.4),
        _box(u, v - 0.65, 0.25, 0.38),
    )
    return np.minimum(np.minimum(head, torso), legs), legs <= 0


def sign(u: Field, v: Field) -> tuple[Field, Field]:
    pole = _box(u, v - 0.45, 0.06, 0.6)
    plate = (np.abs(u) + np.abs(v + 0.45) - F32(0.5)) * F32(0.7071)
    return np.minimum(pole, plate), pole <= 0


def light(u: Field, v: Field) -> tuple[Field, Field]:
    lamps = np.minimum(
        np.minimum(_disk(u, v, 0, -0.6, 0.2), _disk(u, v, 0, 0, 0.2)), _disk(u, v, 0, 0.6, 0.2)
    )
    return _box(u, v, 0.32, 1.0), lamps <= 0


def cat(u: Field, v: Field) -> tuple[Field, Field]:
    head = _disk(u, v, 0.0, 0.15, 0.72)
    ears = np.minimum(_tri_at(u, v, -0.45, -0.6), _tri_at(u, v, 0.45, -0.6))
    eyes = np.minimum(_disk(u, v, -0.27, 0.05, 0.11), _disk(u, v, 0.27, 0.05, 0.11)) <= 0
    return np.minimum(head, ears), eyes


def _tri_at(u: Field, v: Field, x: float, y: float) -> Field:
    return _triangle((u - x) * 2.2, (v - y) * 2.2)[0] / F32(2.2)


def dog(u: Field, v: Field) -> tuple[Field, Field]:
    head = _len(u, (v - 0.05) * F32(0.9)) - F32(0.68)
    ears = np.minimum(
        _len((u + 0.72) * 2, v - 0.2) - 0.55, _len((u - 0.72) * 2, v - 0.2) - 0.55
    ) * F32(0.5)
    eyes = np.minimum(_disk(u, v, -0.25, -0.05, 0.1), _disk(u, v, 0.25, -0.05, 0.1)) <= 0
    return np.minimum(head, ears), (ears <= 0) | eyes | (_disk(u, v, 0, 0.42, 0.14) <= 0)


SHAPES: dict[str, ShapeFn] = {
    "circle": lambda u, v: (_len(u, v) - F32(1.0), None),
    "square": lambda u, v: (_box(u, v, 0.82, 0.82), None),
    "triangle": lambda u, v: _triangle(u, v),
    "pentagon": _pentagon,
    "hexagon": _hexagon,
    "diamond": lambda u, v: ((np.abs(u) + np.abs(v) - F32(1.05)) * F32(0.7071), None),
    "star": star,
    "ring": lambda u, v: (np.abs(_len(u, v) - F32(0.72)) - F32(0.3), None),
    "cross": lambda u, v: (np.minimum(_box(u, v, 1.0, 0.32), _box(u, v, 0.32, 1.0)), None),
    "ellipse": lambda u, v: ((_len(u, v * F32(1.8)) - F32(1.05)) * F32(0.55), None),
    "crescent": lambda u, v: (
        np.maximum(_len(u, v) - F32(1.0), F32(0.85) - _len(u - 0.55, v + 0.1)),
        None,
    ),
    "blob": lambda u, v: (
        np.minimum(
            np.minimum(_disk(u, v, -0.35, 0.15, 0.6), _disk(u, v, 0.38, 0.2, 0.55)),
            _disk(u, v, 0.0, -0.35, 0.55),
        ),
        None,
    ),
    "car": car,
    "bus": bus,
    "person": person,
    "sign": sign,
    "light": light,
    "cat": cat,
    "dog": dog,
}
BASIC_SHAPES = (
    "circle",
    "square",
    "triangle",
    "pentagon",
    "hexagon",
    "diamond",
    "star",
    "ring",
    "cross",
    "ellipse",
    "crescent",
    "blob",
)
EXTENT: dict[str, float] = {
    **{s: 1.2 for s in SHAPES},
    "bus": 1.3,
    "ellipse": 1.1,
}  # local radius holding the shape


# ---------------------------------------------------------------------- textures (t in [0, 1])


def _tri(w: Field) -> Field:
    """Triangle wave in [0, 1] with period 1 (IEEE-exact stand-in for a sinusoid)."""
    return np.abs((w - np.floor(w)) * F32(2) - F32(1))


def _soft(t: Field, sharp: float = 4.0) -> Field:
    return np.clip((t - F32(0.5)) * F32(sharp) + F32(0.5), F32(0), F32(1))


def _along(u: Field, v: Field, o: Instance) -> Field:
    return (u * F32(o.tex_dir[0]) + v * F32(o.tex_dir[1])) * F32(o.freq) + F32(o.phase[0])


def _grid(u: Field, v: Field, o: Instance) -> tuple[Field, Field]:
    c, s = F32(o.tex_dir[0]), F32(o.tex_dir[1])
    f = F32(o.freq)
    return (u * c + v * s) * f + F32(o.phase[0]), (v * c - u * s) * f + F32(o.phase[1])


def _dots(u: Field, v: Field, o: Instance) -> Field:
    a, b = _grid(u, v, o)
    a, b = a - np.floor(a) - F32(0.5), b - np.floor(b) - F32(0.5)
    return _soft(F32(0.3) - np.sqrt(a * a + b * b) + F32(0.5), 12.0)


def _checker(u: Field, v: Field, o: Instance) -> Field:
    a, b = _grid(u, v, o)
    return ((np.floor(a) + np.floor(b)) % 2).astype(F32)


def _blobs(u: Field, v: Field, o: Instance) -> Field:
    a, b = _grid(u, v, o)
    return _soft(
        (_tri(a) + _tri(b * F32(0.7) + a * F32(0.4)) + _tri(b + F32(0.3))) * F32(0.5) - F32(0.25),
        3.0,
    )


TEXTURES: dict[str, TextureFn] = {
    "solid": lambda u, v, o: None,
    "stripes": lambda u, v, o: _soft(_tri(_along(u, v, o))),
    "checker": _checker,
    "dots": _dots,
    "radial": lambda u, v, o: np.minimum(_len(u, v) * F32(0.9), F32(1)),
    "rings": lambda u, v, o: _soft(_tri(_len(u, v) * F32(o.freq) + F32(o.phase[0]))),
    "blobs": _blobs,
}


# ----------------------------------------------------------------------------- canvas + painter


@lru_cache(maxsize=64)
def pixel_centres(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=F32) + F32(0.5)) / F32(size)).astype(F32)  # (S,)


class Canvas:
    """An image painted back to front; keeps the instance id and depth of the front-most object."""

    def __init__(self, image: np.ndarray, depth: np.ndarray | None) -> None:
        self.size = image.shape[0]
        self.image = image  # (S, S, 3) float32 in [0, 1]
        self.depth = depth  # (S, S) float32 or None (not asked for)
        self.instance = np.zeros(
            image.shape[:2], np.int16
        )  # (S, S) 0 = background, k = k-th painted
        self.full_area: list[int] = (
            []
        )  # pixels of each painted object's own mask, image border ignored

    def paint(self, o: Instance) -> None:
        """Composite one object over the canvas (call in decreasing depth: painter's algorithm)."""
        S, r = self.size, o.radius
        sx = float(np.sqrt(o.aspect))
        sy = 1.0 / sx
        ext = EXTENT[o.shape] * r * max(sx, sy)
        x0, x1 = int(np.floor((o.cx - ext) * S)), int(np.ceil((o.cx + ext) * S))
        y0, y1 = int(np.floor((o.cy - ext) * S)), int(np.ceil((o.cy + ext) * S))
        dx = ((np.arange(x0, x1, dtype=F32) + F32(0.5)) / F32(S) - F32(o.cx)) / F32(r)  # (w,)
        dy = ((np.arange(y0, y1, dtype=F32) + F32(0.5)) / F32(S) - F32(o.cy)) / F32(r)  # (h,)
        c, s = o.rot
        u = dx[None, :] * F32(c / sx) + dy[:, None] * F32(s / sx)  # (h, w)
        v = dy[:, None] * F32(c / sy) - dx[None, :] * F32(s / sy)
        if o.flip:
            u = -u
        sdf, accent = SHAPES[o.shape](u, v)
        own = sdf <= 0
        self.full_area.append(int(np.count_nonzero(own)))
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x1, S), min(y1, S)
        if self.full_area[-1] == 0 or cx1 <= cx0 or cy1 <= cy0:
            return
        crop = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        target = (slice(cy0, cy1), slice(cx0, cx1))
        u, v, sdf, own = u[crop], v[crop], sdf[crop], own[crop]
        alpha = np.clip(F32(0.5) - sdf * F32(r * S * min(sx, sy)), F32(0), F32(1))[
            ..., None
        ]  # (h, w, 1)
        colour = self._colour(o, u, v, None if accent is None else accent[crop])
        region = self.image[target]
        region += alpha * (colour - region)
        self.instance[target][own] = len(self.full_area)
        if self.depth is not None:
            self.depth[target][own] = o.z

    @staticmethod
    def _colour(o: Instance, u: Field, v: Field, accent: Field | None) -> np.ndarray:
        """(h, w, 3): colour c1 mixed with c2 by the texture, accent parts in c3, linear shading."""
        c1 = np.asarray(o.c1, F32)
        t = TEXTURES[o.texture](u, v, o)
        colour = (
            np.broadcast_to(c1, u.shape + (3,))
            if t is None
            else c1 + t[..., None] * (np.asarray(o.c2, F32) - c1)
        )
        if accent is not None:
            colour = np.where(accent[..., None], np.asarray(o.c3, F32), colour)
        shade = F32(1) + u * F32(o.light[0]) + v * F32(o.light[1])  # (h, w)
        return colour * shade[..., None]


# ----------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=64)
def _bilinear(size: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (i0, i1) and smoothstep weights w (S,) that upsample k grid values to S pixels."""
    p = pixel_centres(size) * F32(k - 1)
    i0 = np.minimum(np.floor(p).astype(np.int64), k - 2)
    w = p - i0.astype(F32)
    return i0, i0 + 1, (w * w * (F32(3) - F32(2) * w)).astype(F32)


def lowfreq(rng: np.random.Generator, size: int, k: int, channels: int = 3) -> np.ndarray:
    """Smooth value noise in [-0.5, 0.5]: a random k x k grid upsampled (S, S, channels)."""
    g = rng.random((k, k, channels), dtype=F32) - F32(0.5)
    i0, i1, w = _bilinear(size, k)
    wr = w[:, None, None]
    rows = g[i0] * (F32(1) - wr) + g[i1] * wr  # (S, k, c)
    return rows[:, i0] * (F32(1) - w[None, :, None]) + rows[:, i1] * w[None, :, None]  # (S, S, c)


def gradient(size: int, a: np.ndarray, b: np.ndarray, direction: tuple[float, float]) -> np.ndarray:
    """(S, S, 3) linear blend from colour a to b along `direction`."""
    x = pixel_centres(size)
    t = (
        (x[None, :] - F32(0.5)) * F32(direction[0])
        + (x[:, None] - F32(0.5)) * F32(direction[1])
        + F32(0.5)
    )
    return a + t[..., None] * (b - a)


def ground_depth(size: int, horizon: float, far: float = 20.0, cam: float = 0.5) -> np.ndarray:
    """(S, S) depth of a ground plane seen by a level camera: cam / (y - horizon) <= far."""
    y = pixel_centres(size)
    d = np.where(y > horizon, F32(cam) / np.maximum(y - F32(horizon), F32(1e-3)), F32(far))
    return np.broadcast_to(np.minimum(d, F32(far))[:, None], (size, size)).copy()


def rectangles(
    rng: np.random.Generator, image: np.ndarray, count: int, scale: float, y_range=(0.0, 1.0)
) -> None:
    """Distractor patches (not objects: they stay out of every mask), blended in place."""
    S = image.shape[0]
    for _ in range(count):
        w, h = rng.uniform(0.03, scale, 2)
        x, y = rng.uniform(0, 1 - w), rng.uniform(*y_range)
        colour = np.asarray(hsv(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.9)), F32)
        region = image[
            int(y * S) : max(int((y + h) * S), int(y * S) + 1), int(x * S) : int((x + w) * S) + 1
        ]
        region += F32(rng.uniform(0.3, 0.8)) * (colour - region)
