"""The sparse RoIAlign equals torchvision's roi_align (values and gradients) where it replaces it."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from transfer.roi_align import SparseRoIAlign, roi_align_sparse


def rois_for(n: int, r: int, h: int, w: int, stride: int, g: torch.Generator) -> torch.Tensor:
    """R x 5 boxes in image pixels: some start left of / above the map, some reach past its far border,
    some are thinner than a cell (torchvision clamps their size to 1)."""
    b = torch.randint(0, n, (r, 1), generator=g).float()
    xy = torch.rand(r, 2, generator=g) * torch.tensor([w, h]) * stride - 8
    wh = torch.rand(r, 2, generator=g) * torch.tensor([w, h]) * stride * 0.9 + 0.3
    return torch.cat([b, xy, xy + wh], 1)


@pytest.mark.parametrize(
    "n, c, h, w, out, ratio, aligned",
    [(4, 32, 5, 5, 4, 2, False), (3, 16, 4, 7, 4, 2, True), (2, 8, 13, 9, 7, 1, False), (2, 8, 6, 6, 3, 3, False)],
)
def test_values_and_gradients_equal_torchvisions(n, c, h, w, out, ratio, aligned) -> None:
    g = torch.Generator().manual_seed(n * 100 + c)
    features = torch.randn(n, c, h, w, generator=g)
    rois = rois_for(n, 64, h, w, 16, g)
    theirs, mine = features.clone().requires_grad_(), features.clone().requires_grad_()
    expected = roi_align(theirs, rois, (out, out), 1 / 16, ratio, aligned)
    got = roi_align_sparse(mine, rois, (out, out), 1 / 16, ratio, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().sum() > 0 and (expected == 0).any()  # real values, and outside points counted as zero
    grad = torch.randn(expected.shape, generator=g)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-4)


def test_pooler_module_replaces_only_the_fixed_ratio_single_map_cpu_case() -> None:
    g = torch.Generator().manual_seed(0)
    maps = {"0": torch.randn(2, 8, 6, 6, generator=g)}
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 50.0], [0.0, 0.0, 96.0, 96.0]]), torch.tensor([[10.0, 20.0, 30.0, 90.0]])]
    shapes = [(96, 96), (96, 96)]
    for ratio in (2, 0):  # 0: adaptive, torchvision's own path
        ours = SparseRoIAlign(["0"], 4, ratio)(maps, boxes, shapes)
        theirs = MultiScaleRoIAlign(["0"], 4, ratio)(maps, boxes, shapes)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fixed ratio"):
        roi_align_sparse(maps["0"], torch.zeros(1, 5), (2, 2), 1.0, 0)
