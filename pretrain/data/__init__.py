"""Pretraining datasets by the paper's names (Table 1), each with a bias-world twin and a real builder.

``source: biasworld`` generates the variant procedurally (the embedded default); ``source: real`` builds
the manifest of the real dataset from a root the user gives (site config), then reads its images.
"""

from __future__ import annotations

from pretrain.registry import lookup
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SOURCES = ("biasworld", "real")


@dataclass(frozen=True)
class PretrainDataset:
    name: str  # the spec's name
    paper_name: str  # as in paper Table 1
    biasworld: str | None  # bias-world variant standing in for it (None: real images only)
    real: str  # manifest builder of the real dataset
    nominal_size: int  # images in the paper's variant (Table 1)


PRETRAIN_DATASETS: dict[str, PretrainDataset] = {
    d.name: d
    for d in [
        PretrainDataset("in118k", "ImageNet-118K", "object_uniform", "in118k", 118_000),
        PretrainDataset("in118k_lt", "ImageNet-118K-LT", "object_lt", "in118k_lt", 118_000),
        PretrainDataset("coco", "COCO", "scene_coco", "coco", 118_000),
        PretrainDataset("oi118k", "OpenImages-118K", "scene_oi", "oi118k", 118_000),
        PretrainDataset("bdd100k", "BDD100K", "street", "bdd100k", 90_000),
        # your own images: `data: {name: folder, root: /path/to/images}`; size null = all of them
        PretrainDataset("folder", "Image folder", None, "folder", 0),
    ]
}


def get_dataset(name: str) -> PretrainDataset:
    return lookup(PRETRAIN_DATASETS, name, "pretraining dataset")


def data_defaults(name: str) -> dict[str, Any]:
    """The data section of a pretraining spec at the paper's size."""
    dataset = get_dataset(name)
    if dataset.biasworld is None:  # a folder of the user's images: real at every profile, its root in the key
        return {"name": name, "source": "real", "root": None, "size": None, "image_size": 224, "seed": 0}
    return {
        "name": name,
        "source": "biasworld",
        "size": dataset.nominal_size,
        "image_size": 224,  # bias world: rendered size; real data: ignored (crops come from the originals)
        "seed": 0,
    }


def load_pretrain_images(
    spec: dict[str, Any], cache_dir: Path | None, roots: dict[str, str] | None = None
) -> torch.Tensor | torch.utils.data.Dataset:
    """The images a pretraining job trains on: a uint8 (N,3,H,W) tensor or a Dataset of PIL images."""
    dataset = get_dataset(spec["name"])
    if spec["source"] == "biasworld":
        world = biasworld_set(spec, cache_dir)
        return torch.from_numpy(np.ascontiguousarray(world.images.transpose(0, 3, 1, 2)))
    if spec["source"] == "real":
        from pretrain.data.images import ManifestImages

        return ManifestImages(real_manifest(dataset, spec, cache_dir, roots or {}))
    raise ValueError(f"unknown data source '{spec['source']}'; valid: {', '.join(SOURCES)}")


def load_pretrain_labels(
    spec: dict[str, Any], cache_dir: Path | None, roots: dict[str, str] | None = None
) -> torch.Tensor:
    """Each pretraining image's label, in load_pretrain_images' order (supervised pretraining):
    (N,) class ids (objects, scene types) or (N, C) 0/1 rows (multi-label scenes)."""
    dataset = get_dataset(spec["name"])
    if spec["source"] == "biasworld":
        return torch.from_numpy(np.ascontiguousarray(biasworld_set(spec, cache_dir).labels))
    manifest = real_manifest(dataset, spec, cache_dir, roots or {})
    if manifest.class_ids is None:
        raise ValueError(
            f"'{dataset.name}' has no per-image class labels in its manifest (its images are read "
            "without annotations): supervised pretraining needs a class-labelled set such as "
            "in118k, or a folder with one sub-folder per class"
        )
    return torch.tensor(manifest.class_ids)


def biasworld_set(spec: dict[str, Any], cache_dir: Path | None):
    from pretrain.data.biasworld import generate

    dataset = get_dataset(spec["name"])
    return generate(
        dataset.biasworld,
        split="train",
        n=int(spec["size"]),
        size=int(spec["image_size"]),
        seed=int(spec["seed"]),
        cache_dir=cache_dir,
    )


def real_manifest(dataset: PretrainDataset, spec: dict[str, Any], cache_dir: Path | None, roots: dict):
    """Build (or load the cached) manifest of the real dataset from the root the site config names."""
    from pretrain.data.manifests import Manifest, build_manifest

    root = spec.get("root") or roots.get(dataset.name)
    if dataset.biasworld is None and not root:
        raise FileNotFoundError(
            f"the '{dataset.name}' dataset needs its root in the row: "
            f"data: {{name: {dataset.name}, root: /path/to/your/images}}"
        )
    if root is None:
        raise FileNotFoundError(
            f"no root given for the real dataset '{dataset.name}' ({dataset.paper_name}). "
            f"Name it in the dataset config (datasets.yaml: '{dataset.name}: /path/to/root') "
            f"or pass --data-root {dataset.name}=/path/to/root."
        )
    size = None if dataset.name in ("coco", "bdd100k") or spec["size"] is None else int(spec["size"])
    cached = None
    if cache_dir is not None:
        root_id = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
        name = f"{dataset.name}-{root_id}-s{spec['seed']}-n{size}.json"
        cached = Path(cache_dir) / "manifests" / name
        if cached.exists():
            return Manifest.load(cached)
    manifest = build_manifest(dataset.real, root, seed=int(spec["seed"]), size=size)
    _check_decodable(manifest)  # once per manifest: each epoch drops a different batch remainder
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        manifest.save(cached)
    return manifest


def _check_decodable(manifest) -> None:
    """Every file of a new manifest decodes, else CorruptImageError naming them: a corrupt image is
    reported before training, never skipped (it could hide in the batches an epoch drops)."""
    from pretrain.data.images import verify
    from pretrain.data.manifests import CorruptImageError

    bad = verify(manifest)
    if bad:
        raise CorruptImageError(
            f"{len(bad)} image(s) of {manifest.root} cannot be decoded: {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else "")
            + "; replace or remove them, then run again"
        )


def overview(spec: dict[str, Any], cache_dir: Path | None, roots: dict[str, str] | None = None) -> dict:
    """Table 1's columns measured from the built variant: images, objects per image, uniform, discriminative.

    Uniform: the classes' image (or object) counts differ by at most a factor UNIFORM_MAX_RATIO.
    Discriminative: the effective number of object classes (exp of the entropy of their frequencies)
    is at least DISCRIMINATIVE_MIN_CLASSES; a domain-specific set shows the same few objects again and again.
    """
    dataset = get_dataset(spec["name"])
    if spec["source"] == "biasworld":
        world = biasworld_set(spec, cache_dir)
        counts = np.bincount(world.objects["class"], minlength=world.num_classes)
        if not world.multilabel:  # object-centric: one label per image decides the class balance
            counts = np.bincount(world.labels, minlength=world.num_classes)
        return {"images": len(world.images), "objects_per_image": world.objects_per_image(),
                **class_balance(counts)}  # fmt: skip
    stats = real_manifest(dataset, spec, cache_dir, roots or {}).stats()
    counts = stats.get("class_counts")
    balance = class_balance(np.asarray(counts)) if counts else {"uniform": None, "discriminative": None}
    return {"images": stats["images"], "objects_per_image": stats.get("objects_per_image"), **balance}


UNIFORM_MAX_RATIO = 1.5
DISCRIMINATIVE_MIN_CLASSES = 10.0


def class_balance(counts: np.ndarray) -> dict:
    present = counts[counts > 0].astype(np.float64)
    freq = present / present.sum()
    effective = float(np.exp(-(freq * np.log(freq)).sum()))
    ratio = float(present.max() / present.min())
    return {
        "uniform": ratio <= UNIFORM_MAX_RATIO,
        "discriminative": effective >= DISCRIMINATIVE_MIN_CLASSES,
        "class_ratio": ratio,
        "effective_classes": effective,
        "num_classes": int(len(present)),
    }
