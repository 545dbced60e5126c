"""Bias-world twin of DAVIS-2017 val (Tables 3, 5, 9): clips of the "davis" scene variant, moving objects that
occlude each other, with per-frame instance masks (0 background, k = k-th object in the painter's order).

Rendering is fast (about 20 ms per 16-frame clip at 64 px), so clips are not cached on disk: the same
(variant, split, n_videos, frames, image_size, seed, speed) always renders the same clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.data import Video, get_target


def video_split(spec: dict[str, Any], split: str, cache_dir: Path | None) -> list[Video]:
    """spec: the data section of a transfer spec (name, image_size, seed, n_videos, frames, speed)."""
    from pretrain.data.biasworld import video

    for key in ("n_videos", "frames", "speed"):
        if key not in spec:
            raise ValueError(f"bias-world video data needs data.{key} (see transfer.data.VIDEO_DATA)")
    if int(spec["frames"]) < 2:
        raise ValueError(f"data.frames must be >= 2 (frame 0 is given), got {spec['frames']}")
    clips = video(
        get_target(spec["name"]).biasworld,
        split=split,
        n=int(spec["n_videos"]),
        frames=int(spec["frames"]),
        size=int(spec["image_size"]),
        seed=int(spec["seed"]),
        speed=float(spec["speed"]),
    )
    return [
        Video(
            name=f"{clips.name}-{split}-{i:04d}",
            frames=torch.from_numpy(np.ascontiguousarray(clips.frames[i].transpose(0, 3, 1, 2))),
            masks=torch.from_numpy(clips.instance_masks[i].astype(np.int64)),
        )
        for i in range(len(clips.frames))
    ]
