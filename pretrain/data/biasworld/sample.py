"""One image's content from its own generator: background, then object instances with depths.

Scenes use a level camera over a ground plane: an object at depth z stands at y = horizon + CAM / z
and has radius base * size / z, so farther objects are higher, smaller and painted first.
"""

from __future__ import annotations

import numpy as np

from pretrain.data.biasworld.render import (
    F32,
    Instance,
    gradient,
    ground_depth,
    hsv,
    lowfreq,
    pixel_centres,
    rectangles,
    unit,
)
from pretrain.data.biasworld.variants import VariantSpec
from pretrain.data.biasworld.world import TEXTURE_NAMES, ObjectClass, SceneType

CAM = 0.5  # camera height x focal length: ground row y sees depth CAM / (y - horizon)
BOTTOM = {
    "person": 1.0,
    "car": 0.65,
    "bus": 0.77,
    "sign": 1.05,
    "light": 1.0,
    "cat": 0.87,
    "dog": 0.75,
}
STREET_ROLE = {"car": "road", "bus": "road", "pedestrian": "walk", "sign": "side", "light": "side"}
STREET_FREQ = (0.45, 0.25, 0.1, 0.1, 0.1)  # car, pedestrian, sign, light, bus
Content = tuple[
    np.ndarray, np.ndarray | None, list[Instance]
]  # image (S,S,3) f32, depth (S,S) | None, objects


def instance(
    rng: np.random.Generator, k: int, c: ObjectClass, cx: float, cy: float, radius: float, z: float
) -> Instance:
    """An instance of class c (index k), with per-instance colour, pose and texture jitter."""
    q = rng.random(16)
    hue = (q[0] if c.hue is None else c.hue) + (
        q[1] - 0.5
    ) * 3.4 * c.hue_jitter  # uniform, std ~ hue_jitter
    sat, val = c.sat + (q[2] - 0.5) * 0.2, c.val + (q[3] - 0.5) * 0.3
    rot = unit((q[5] * 2 - 1) * (0.08 if c.upright else 1.0))
    if not c.upright and q[6] < 0.5:
        rot = (-rot[0], -rot[1])  # the other half turn
    return Instance(
        cls=k,
        shape=c.shape,
        texture=c.texture or TEXTURE_NAMES[int(q[4] * len(TEXTURE_NAMES))],
        cx=cx,
        cy=cy,
        radius=radius,
        rot=rot,
        aspect=c.aspect * (0.85 + 0.3 * q[7]),
        flip=c.upright and q[6] < 0.5,
        z=z,
        c1=hsv(hue, sat, val),
        c2=hsv(hue + c.hue2, sat, c.val2 + (q[8] - 0.5) * 0.15),
        c3=hsv(*c.accent),
        freq=c.freq * (0.92 + 0.16 * q[10]),
        tex_dir=unit(min(max(c.angle + (q[9] - 0.5) * 0.1, -1.0), 1.0)),
        phase=(float(q[11]), float(q[12])),
        light=((q[13] - 0.5) * 0.3, (q[14] - 0.5) * 0.3),
    )


# ----------------------------------------------------------------------------- backgrounds


def backdrop(
    rng: np.random.Generator, size: int, clutter: int, dense: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Object-centric background: two-colour gradient + smooth noise; depth: a tilted backdrop."""
    q = rng.random(8)
    a = np.asarray(hsv(q[0], 0.1 + 0.4 * q[1], 0.3 + 0.6 * q[2]), F32)
    b = np.asarray(hsv(q[0] + (q[3] - 0.5) * 0.3, 0.1 + 0.4 * q[4], 0.3 + 0.6 * q[5]), F32)
    direction = unit(q[6] * 2 - 1)
    image = gradient(size, a, b, direction if q[7] < 0.5 else (-direction[0], -direction[1]))
    image += lowfreq(rng, size, 4) * F32(0.2)
    rectangles(rng, image, clutter, 0.3)
    depth = (
        F32(3) + F32(2) * (F32(1) - pixel_centres(size))[:, None] + np.zeros((1, size), F32)
        if dense
        else None
    )
    return image, depth


def layout(
    rng: np.random.Generator, size: int, st: SceneType, clutter: int, dense: bool
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Scene background: wall/sky above the horizon, floor/ground below, noise, clutter patches."""
    q = rng.random(7)
    horizon = st.horizon + (q[0] - 0.5) * 0.24
    upper = np.asarray(
        hsv(
            st.upper[0] + (q[1] - 0.5) * 0.06,
            st.upper[1] + (q[2] - 0.5) * 0.2,
            st.upper[2] + (q[3] - 0.5) * 0.2,
        ),
        F32,
    )
    lower = np.asarray(
        hsv(
            st.lower[0] + (q[4] - 0.5) * 0.06,
            st.lower[1] + (q[5] - 0.5) * 0.2,
            st.lower[2] + (q[6] - 0.5) * 0.2,
        ),
        F32,
    )
    y = pixel_centres(size)[:, None, None]  # (S, 1, 1)
    image = np.where(
        y < F32(horizon), upper * (F32(0.85) + F32(0.3) * y), lower * (F32(0.7) + F32(0.4) * y)
    )
    image = image + lowfreq(rng, size, 5) * F32(0.2) + lowfreq(rng, size, 12) * F32(0.1)
    rectangles(rng, image, st.clutter + clutter, 0.25)
    return (
        image.astype(F32),
        ground_depth(size, horizon, far=10.0, cam=CAM) if dense else None,
        horizon,
    )


def street_scene(
    rng: np.random.Generator, size: int, dense: bool
) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Sky, buildings, a road in perspective with lane marks, sidewalks; depth: a ground plane."""
    q = rng.random(6)
    horizon, vx = 0.36 + (q[0] - 0.5) * 0.1, 0.5 + (q[1] - 0.5) * 0.2
    x, y = pixel_centres(size)[None, :], pixel_centres(size)[:, None]  # (1, S), (S, 1)
    t = np.clip((y - F32(horizon)) / F32(1 - horizon), F32(0), F32(1))  # (S, 1) 0 at the horizon
    half = F32(0.6) * t + F32(0.002)  # road half-width (S, 1)
    off = np.abs(x - F32(vx))  # (S, S)
    sky = (
        np.asarray(hsv(0.58, 0.25 + 0.3 * q[2], 0.95), F32) * (F32(0.75) + F32(0.4) * y)[..., None]
    )
    image = np.broadcast_to(sky, (size, size, 3)).copy()
    rectangles(rng, image, 8, 0.2, (horizon - 0.2, horizon - 0.05))  # buildings
    below = (y > F32(horizon))[..., None]
    ground = np.where(
        (off < half * F32(1.7))[..., None],
        np.asarray(hsv(0.1, 0.05, 0.62), F32),
        np.asarray(hsv(0.25, 0.35, 0.35 + 0.2 * q[3]), F32),
    )
    ground = np.where(
        (off < half)[..., None], np.asarray(hsv(0.6, 0.05, 0.3 + 0.1 * q[4]), F32), ground
    )
    dash = ((F32(0.3) / (y - F32(horizon) + F32(0.03)) + F32(q[5])) % F32(1)) < F32(0.5)  # (S, 1)
    width = F32(0.004) + F32(0.012) * t
    marks = (np.abs(off - half * F32(0.97)) < width) | ((np.abs(x - F32(vx)) < width) & dash)
    ground = np.where(marks[..., None], np.asarray((0.9, 0.88, 0.7), F32), ground)
    image = np.where(below, ground, image) + lowfreq(rng, size, 6) * F32(0.08)
    return (
        image.astype(F32),
        ground_depth(size, horizon, far=30.0, cam=CAM) if dense else None,
        horizon,
        vx,
    )


# ----------------------------------------------------------------------------- contents


def object_centric(
    rng: np.random.Generator,
    spec: VariantSpec,
    vocab: tuple[ObjectClass, ...],
    label: int,
    size: int,
    dense: bool,
) -> Content:
    """A dominant centred object of class `label` (depth 1), small ones anywhere (0.6 < z < 3)."""
    image, depth = backdrop(rng, size, spec.clutter, dense)
    q = rng.random(3)
    j = spec.centre_jitter
    lo, hi = spec.radius
    objects = [
        instance(
            rng,
            label,
            vocab[label],
            0.5 + (q[0] - 0.5) * 2 * j,
            0.5 + (q[1] - 0.5) * 2 * j,
            lo + (hi - lo) * q[2],
            1.0,
        )
    ]
    for _ in range(min(int(rng.poisson(spec.objects)), 3) if spec.objects > 0 else 0):
        k, (x, y, r, z) = int(rng.integers(len(vocab))), rng.random(4)
        objects.append(
            instance(rng, k, vocab[k], 0.1 + 0.8 * x, 0.1 + 0.8 * y, 0.05 + 0.06 * r, 0.6 + 2.4 * z)
        )
    return image, depth, objects


def scene(
    rng: np.random.Generator,
    spec: VariantSpec,
    vocab: tuple[ObjectClass, ...],
    st: SceneType,
    size: int,
    dense: bool,
) -> Content:
    """Objects of the scene type's classes; most stand on the ground (uniform in 1 / depth)."""
    image, depth, horizon = layout(rng, size, st, spec.clutter, dense)
    n = min(1 + int(rng.poisson(spec.objects - 1)), spec.max_objects)
    classes = rng.choice(len(vocab), n, p=np.asarray(st.weights))
    objects = []
    for k in classes:
        c = vocab[k]
        q = rng.random(5)
        inv = 1 / spec.depth[1] + (1 / spec.depth[0] - 1 / spec.depth[1]) * q[0]  # 1 / z
        r = (spec.radius[0] + (spec.radius[1] - spec.radius[0]) * q[1]) * c.size * inv
        grounded = q[2] < spec.grounded
        cy = horizon + CAM * inv - r * BOTTOM.get(c.shape, 1.0) if grounded else 0.05 + 0.9 * q[3]
        objects.append(instance(rng, int(k), c, -0.05 + 1.1 * q[4], cy, r, 1 / inv))
    return image, depth, objects


def street(
    rng: np.random.Generator,
    spec: VariantSpec,
    vocab: tuple[ObjectClass, ...],
    size: int,
    dense: bool,
) -> Content:
    """Cars and buses on the road, pedestrians on the sidewalks, signs and lights at the side."""
    image, depth, horizon, vx = street_scene(rng, size, dense)
    n = min(1 + int(rng.poisson(spec.objects - 1)), spec.max_objects)
    objects = []
    for k in rng.choice(len(vocab), n, p=np.asarray(STREET_FREQ)):
        c = vocab[k]
        q = rng.random(4)
        inv = 1 / spec.depth[1] + (1 / spec.depth[0] - 1 / spec.depth[1]) * q[0]
        half = 0.6 * (CAM * inv) / (1 - horizon)  # road half-width at the object's ground row
        side = 1.0 if q[2] < 0.5 else -1.0
        x = {
            "road": (q[3] - 0.5) * 1.5,
            "walk": side * (1.05 + 0.55 * q[3]),
            "side": side * (1.5 + 0.4 * q[3]),
        }
        r = (spec.radius[0] + (spec.radius[1] - spec.radius[0]) * q[1]) * c.size * inv
        cy = horizon + CAM * inv - r * BOTTOM.get(c.shape, 1.0)
        objects.append(instance(rng, int(k), c, vx + x[STREET_ROLE[c.name]] * half, cy, r, 1 / inv))
    return image, depth, objects
