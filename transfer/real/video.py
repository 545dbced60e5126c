"""DAVIS-2017 semi-supervised video object segmentation (Tables 3, 5, 9; A.6).

Splits (provenance: davis2017-evaluation / the DAVIS 2017 TrainVal release): train =
ImageSets/2017/train.txt (60 sequences), val = ImageSets/2017/val.txt (30, the split the paper reports);
"test" = val (test-dev has first-frame masks only). Every frame of a listed sequence is annotated:
Annotations/480p/<seq>/<frame>.png is palette-indexed with the instance id (0 background, 1..K).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from transfer.data import Video
from transfer.real.common import first_existing, layout_error, read_label, read_lines, require_files
from pretrain.data.images import read_rgb

DAVIS_LAYOUT = """\
  <root>/                      (DAVIS/ of DAVIS-2017-trainval-480p)
    JPEGImages/480p/<seq>/00000.jpg ...
    Annotations/480p/<seq>/00000.png ...   palette PNGs: 0 background, 1..K instance ids
    ImageSets/2017/train.txt, val.txt      one sequence name per line"""


class VideoList(Sequence):
    """The clips of a split, each decoded when accessed (a val clip is ~100 MB of frames and masks)."""

    def __init__(self, clips: list[tuple[str, list[Path], list[Path]]]) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index):  # int -> Video, slice -> list[Video]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        name, frames, masks = self.clips[index]
        frame_t = torch.stack(
            [torch.from_numpy(np.asarray(read_rgb(p)).copy()).permute(2, 0, 1) for p in frames]
        )
        mask_t = torch.stack([torch.from_numpy(read_label(p).astype(np.int64)) for p in masks])
        if frame_t.shape[-2:] != mask_t.shape[-2:]:
            raise layout_error(
                masks[0].parent,
                DAVIS_LAYOUT,
                f"davis: {name}: frames {tuple(frame_t.shape[-2:])} "
                f"and masks {tuple(mask_t.shape[-2:])} differ in size",
            )
        return Video(name, frame_t.contiguous(), mask_t)


def davis(root: Path, split: str) -> VideoList:
    frames_dir = first_existing(root, ("JPEGImages/480p",), DAVIS_LAYOUT, "davis frames")
    masks_dir = first_existing(root, ("Annotations/480p",), DAVIS_LAYOUT, "davis annotations")
    name = "train.txt" if split == "train" else "val.txt"
    clips = []
    for seq in read_lines(root / "ImageSets" / "2017" / name, DAVIS_LAYOUT, "davis"):
        frames = sorted((frames_dir / seq).glob("*.jpg"))
        if not frames:
            raise layout_error(frames_dir, DAVIS_LAYOUT, f"davis: no frames in {frames_dir / seq}")
        masks = [masks_dir / seq / f"{f.stem}.png" for f in frames]
        require_files(masks, DAVIS_LAYOUT, f"davis {seq} annotations")
        clips.append((seq, frames, masks))
    return VideoList(clips)


VIDEO = {"davis": (lambda root, split, roots: davis(root, split), DAVIS_LAYOUT)}
