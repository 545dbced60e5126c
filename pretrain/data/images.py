"""The images of a manifest as a torch Dataset of PIL RGB images; unreadable files fail loudly."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pretrain.data.manifests import CorruptImageError, Manifest


def read_rgb(path: Path) -> Image.Image:
    """Decode the whole file now (a truncated JPEG fails here, not later in a transform)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (
        OSError,
        SyntaxError,
        ValueError,
    ) as err:  # PIL's decode errors; FileNotFoundError is an OSError
        raise CorruptImageError(f"cannot read image {path}: {err}") from err


class ManifestImages(torch.utils.data.Dataset):
    """Item i: the manifest's i-th file as a PIL RGB image (transform(image) given a transform).

    root overrides the manifest's root, for a manifest built at another site.
    """

    def __init__(
        self,
        manifest: Manifest,
        transform: Callable[[Image.Image], Any] | None = None,
        root: str | Path | None = None,
    ) -> None:
        self.manifest = manifest
        self.root = Path(manifest.root if root is None else root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest.files)

    def path(self, i: int) -> Path:
        return self.root / self.manifest.files[i]

    def __getitem__(self, i: int) -> Any:
        image = read_rgb(self.path(i))
        return image if self.transform is None else self.transform(image)


def verify(manifest: Manifest, workers: int = 4, root: str | Path | None = None) -> list[str]:
    """Paths of the manifest's files that cannot be decoded (threads: decoding releases the GIL)."""
    images = ManifestImages(manifest, root=root)

    def bad(i: int) -> str | None:
        try:
            read_rgb(images.path(i))
        except CorruptImageError:
            return str(images.path(i))
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [p for p in pool.map(bad, range(len(images))) if p is not None]
