"""What every real transfer loader shares: roots, layout errors, lazy decoding, the ssl-transfer holdout."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pretrain.data.images import read_rgb
from pretrain.data.manifests import CorruptImageError, DatasetLayoutError

__all__ = ["CorruptImageError", "DatasetLayoutError"]

VAL_FRACTION = 0.2  # ssl-transfer linear.py get_train_valid_loader(valid_size=0.2)
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL decoding releases the GIL


def dataset_root(spec: dict[str, Any], roots: dict[str, str], layout: str) -> Path:
    """roots[spec['name']] as an existing folder, or an error naming the key to set and the layout."""
    name = spec["name"]
    if name not in roots:
        raise DatasetLayoutError(
            f"no root given for the real transfer dataset '{name}'. Name it in the dataset config "
            f"(datasets.yaml: '{name}: /path/to/root', or --data-config FILE) or pass "
            f"--data-root {name}=/path/to/root. Expected layout:\n{layout}"
        )
    root = Path(roots[name]).expanduser()
    if not root.is_dir():
        raise layout_error(root, layout, f"{name}: dataset root {root} is not a folder")
    return root


def layout_error(folder: Path, layout: str, problem: str) -> DatasetLayoutError:
    """'<problem>. found in <folder>: [...]. Expected layout: <tree>'."""
    if folder.is_dir():
        entries = sorted(os.listdir(folder))
        more = f", ... ({len(entries)} entries)" if len(entries) > 10 else ""
        found = f"found in {folder}: [{', '.join(entries[:10])}{more}]"
    else:
        found = f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
    return DatasetLayoutError(f"{problem}. {found}. Expected layout:\n{layout}")


def first_existing(
    root: Path, candidates: Sequence[str], layout: str, what: str, dir: bool = True
) -> Path:
    """The first of root/c that is a folder (dir) or a file; else a layout error listing them all."""
    for rel in candidates:
        path = root / rel
        if path.is_dir() if dir else path.is_file():
            return path
    kind = "folder" if dir else "file"
    raise layout_error(
        root, layout, f"{what}: none of {', '.join(candidates)} is a {kind} under {root}"
    )


def read_lines(path: Path, layout: str, what: str) -> list[str]:
    """Non-empty, stripped lines of a split/list file; a missing file names itself and the layout."""
    if not path.is_file():
        raise layout_error(path.parent, layout, f"{what}: split file {path} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def require_files(paths: Sequence[Path], layout: str, what: str) -> None:
    """Every listed file exists; else name the first missing ones (a split file and its folder disagree)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise layout_error(
            missing[0].parent,
            layout,
            f"{what}: {len(missing)} listed files are missing, e.g. {shown}",
        )


def holdout(n: int, split: str, seed: int, fraction: float = VAL_FRACTION) -> np.ndarray:
    """Sorted indices of ssl-transfer's val (first floor(fraction*n) of a seeded shuffle) or the rest.

    Same draws as ssl-transfer's `np.random.seed(seed); np.random.shuffle(indices)` (legacy RandomState),
    so on the same file order the split is the same one; train + val is the whole official train set.
    """
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    k = int(np.floor(fraction * n))
    return np.sort(indices[:k] if split == "val" else indices[k:])


# --------------------------------------------------------------------------------------------------
# decoding


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def read_label(path: Path) -> np.ndarray:
    """The raw values of a label image (palette indices or gray levels; 16-bit kept), shape (H, W)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(
                    f"mode {image.mode}: expected a palette-indexed or single-channel label PNG"
                )
            return np.array(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"cannot read label image {path}: {err}") from err


class LazyItems(Sequence):
    """Item i = load(i), decoded on access; a slice decodes its items in threads and returns a list."""

    def __init__(self, n: int, load: Callable[[int], Any]) -> None:
        self._n, self._load = n, load

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            idx = range(*index.indices(self._n))
            if len(idx) <= 1:
                return [self._load(i) for i in idx]
            with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
                return list(pool.map(self._load, idx))
        if not -self._n <= index < self._n:
            raise IndexError(f"index {index} out of range for {self._n} items")
        return self._load(index % self._n)


class ResizedImages(LazyItems):
    """Classification images: item i uint8 (3, S, S); images[a:b] uint8 (b-a, 3, S, S).

    Protocol A.2: every image resized to S x S (no crop), bicubic as ssl-transfer's Resize.
    `source(i)` returns the i-th PIL image (decoded from a file, or an in-memory array for CIFAR).
    """

    def __init__(self, n: int, source: Callable[[int], Image.Image], size: int) -> None:
        self.size = int(size)
        super().__init__(n, lambda i: to_tensor(self._resize(source(i))))

    def _resize(self, image: Image.Image) -> Image.Image:
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), Image.BICUBIC)

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        items = super().__getitem__(index)
        if not isinstance(index, slice):
            return items
        if not items:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack(items)


def image_files(paths: Sequence[Path], size: int | None = None) -> LazyItems:
    """Lazy uint8 images of files: (3, H_i, W_i) at their own size, or (3, S, S) resized (size S)."""
    paths = list(paths)
    if size is None:
        return LazyItems(len(paths), lambda i: to_tensor(read_rgb(paths[i])))
    return ResizedImages(len(paths), lambda i: read_rgb(paths[i]), size)
