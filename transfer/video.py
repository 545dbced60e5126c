"""Video instance segmentation by label propagation, no finetuning (Tables 3, 5, 9; A.6): DAVIS-2017 val.

Protocol of Jabri et al. (ajabri/videowalk `code/test.py`), written from its description:
- frozen backbone features at output stride 8, L2-normalised over channels. videowalk uses res4 with the stride
  of res4 removed (ResNet `layer3` at stride 1, no dilation, `layer4` dropped); here `layer="layer3"`,
  `output_stride=8`, `dilate=False` do the same to a torchvision ResNet (transfer/spatial.py). `layer="layer4"`
  with `dilate=True` gives a dilated res5 at stride 8 instead (not the paper's setting).
- frame 0's labels (one channel per object + background, area-downsampled to the feature grid) are given; frame t
  takes its labels from a context of frame 0 and the `n_last_frames` previous frames (their propagated soft labels).
  For each query pixel: cosine affinities to every context pixel within a `radius` x `radius` square window of its
  own position (on the feature grid), the `topk` largest over the whole context, softmax(affinity / temperature)
  over those, and the weighted sum of their labels. Early frames use the frames they have (DINO's queue), without
  padding the context with copies of frame 0.
- soft labels are upsampled bilinearly to the frame and argmax-ed; scored with transfer/video_metrics.py.
Versions (`version` fills the fields left None): "videowalk" (the paper's; default): 20 previous frames, top-k 10,
radius 12, temperature 0.05 (videowalk's README; its argument default is 0.07); "dino" (DINO's
`eval_video_segmentation.py`): 7 previous frames, top-k 5, radius 12, temperature 0.1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pretrain.registry import fill_from_version
from transfer.linear import torch_threads
from transfer.spatial import LAYERS
from transfer.video_metrics import BOUND_TH, davis_scores, score_clip

VERSIONS: dict[str, dict[str, Any]] = {
    "videowalk": {"n_last_frames": 20, "topk": 10, "radius": 12, "temperature": 0.05},
    "dino": {"n_last_frames": 7, "topk": 5, "radius": 12, "temperature": 0.1},
}


@dataclass
class VideoProtocol:
    version: str = "videowalk"  # a key of VERSIONS: sets the four fields below when they are None
    n_last_frames: int | None = None  # context = frame 0 + this many previous frames
    topk: int | None = None
    radius: int | None = None  # half-width of the square window, in feature-grid cells
    temperature: float | None = None
    layer: str = "layer3"  # res4 (videowalk); "layer4": res5
    output_stride: int = 8
    dilate: bool = False  # videowalk removes res4's stride without dilating
    bound_th: float = BOUND_TH  # F's boundary tolerance: fraction of the image diagonal
    batch_size: int = 32  # frames per backbone forward: execution only
    threads: int = 0  # torch threads; 0: every core this process may use
    metric: str = "jf"
    multilabel: bool = False

    def __post_init__(self) -> None:
        fill_from_version(self, VERSIONS, "video protocol")
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer '{self.layer}'; valid: {', '.join(LAYERS)}")
        if self.n_last_frames < 0 or self.topk < 1 or self.radius < 0 or self.temperature <= 0:
            raise ValueError(
                f"need n_last_frames >= 0, topk >= 1, radius >= 0, temperature > 0; got {self.n_last_frames}, "
                f"{self.topk}, {self.radius}, {self.temperature}"
            )
        if self.metric != "jf":
            raise ValueError(f"video propagation reports metric 'jf', got '{self.metric}'")


def window_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """(h*w, h*w) bool: context pixel p may feed query pixel q (|row_p - row_q| <= r and |col_p - col_q| <= r)."""
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    return ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)


def propagate(feats: torch.Tensor, first: torch.Tensor, protocol: VideoProtocol) -> torch.Tensor:
    """Soft labels (T, L, h, w) of every frame; feats (T, D, h, w), first (L, h, w) frame 0's soft labels."""
    T, D, h, w = feats.shape
    keys = F.normalize(feats.flatten(2), dim=1)  # (T, D, P), P = h*w
    labels = [first.flatten(1)]  # (L, P) per frame
    allowed = window_mask(h, w, protocol.radius)  # (P_context, P_query)
    for t in range(1, T):
        context = [0] + list(range(max(1, t - protocol.n_last_frames), t))
        aff = torch.einsum("cdp,dq->cpq", keys[context], keys[t])  # (C, P, P) cosine affinities
        aff = aff.masked_fill(~allowed, float("-inf")).flatten(0, 1)  # (C*P, P)
        k = min(protocol.topk, aff.shape[0])
        top, index = aff.topk(k, dim=0)  # (k, P)
        weights = torch.softmax(top / protocol.temperature, dim=0)  # -inf (outside every window) -> weight 0
        context_labels = torch.cat([labels[c] for c in context], dim=1)  # (L, C*P)
        labels.append((context_labels[:, index] * weights).sum(1))  # (L, P)
    return torch.stack(labels).view(T, -1, h, w)


def segment_clip(feats: torch.Tensor, first_mask: torch.Tensor, protocol: VideoProtocol) -> torch.Tensor:
    """(T, H, W) int64 instance ids predicted from frame 0's mask (H, W) and features (T, D, h, w)."""
    ids = torch.unique(first_mask)  # (L,) background 0 and the objects
    onehot = (first_mask[None] == ids[:, None, None]).float()  # (L, H, W)
    first = F.adaptive_avg_pool2d(onehot[None], feats.shape[-2:])[0]  # area-downsampled soft labels
    soft = propagate(feats, first, protocol)  # (T, L, h, w)
    up = F.interpolate(soft, size=first_mask.shape, mode="bilinear", align_corners=False)
    pred = ids[up.argmax(1)]
    pred[0] = first_mask
    return pred


def run_video(spec: dict, ctx: Any) -> dict:
    """Propagates frame 0's masks through every clip of the split with frozen features; J&F in percent."""
    from pretrain.backbones import load_backbone
    from transfer.data import load_videos
    from transfer.spatial import feature_maps, strided_trunk

    protocol = VideoProtocol(**spec["protocol"])
    start = time.perf_counter()
    clips = load_videos(spec["data"], spec["split"], ctx.cache_dir / "biasworld", ctx.roots)
    with torch_threads(protocol.threads):
        backbone = load_backbone(ctx.backbone_path).to(ctx.device)
        trunk = strided_trunk(backbone, protocol.layer, protocol.output_stride, protocol.dilate)
        per_clip = []
        for i, clip in enumerate(clips):
            feats = feature_maps(trunk, clip.frames, spec["image_size"], protocol.batch_size)
            pred = segment_clip(feats, clip.masks[0], protocol)
            per_clip.append(score_clip(pred, clip.masks, protocol.bound_th))
            ctx.progress({"stage": "propagate", "clip": i + 1, "of": len(clips)})
    scores = davis_scores(per_clip)
    return {
        "value": scores["jf"],
        "metric": "jf",
        **scores,
        "n_clips": len(clips),
        "n_objects": sum(len(c) for c in per_clip),
        "fit_s": time.perf_counter() - start,
    }


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="video",
            protocol=VideoProtocol,
            run=run_video,
            targets=("davis",),
            spec_defaults={
                "image_size": 480,  # frames resized to this short side before the backbone (DAVIS 480p)
                "split": "val",  # DAVIS-2017 val
            },
            description="DAVIS-2017 label propagation from frame 0 on frozen stride-8 features, J&F (Tables 3, 5, 9)",
        )
    )


_register()
