"""Patch masking and the degradation registry."""

import pytest
import torch

from reconaudit.physics import (
    DEGRADATIONS,
    Degradation,
    KspaceUndersampling,
    LowDoseXray,
    RandomMasking,
    make_degradation,
)


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.3, 0.75, 1.0])
def test_exact_patch_count(ratio):
    op = RandomMasking(ratio, patch=8)
    d = op(_images(), [1, 2, 3, 4])
    n_p = 16
    hidden_patches = (d.mask[:, 0, ::8, ::8] == 0).sum(dim=(1, 2))
    assert torch.all(hidden_patches == round(ratio * n_p))
    # patches are hidden whole: each 8x8 block is constant
    blocks = d.mask[:, 0].unfold(1, 8, 8).unfold(2, 8, 8)
    assert torch.all(blocks.amin(dim=(-1, -2)) == blocks.amax(dim=(-1, -2)))
    assert d.info["hidden_fraction"] == pytest.approx(round(ratio * n_p) / n_p)
    torch.testing.assert_close(d.image, _images() * d.mask)


def test_ragged_edge_patches():
    op = RandomMasking(0.5, patch=12)
    m = op.masks((30, 20), [0, 1])
    assert m.shape == (2, 1, 30, 20)
    k, n_p = op.n_hidden((30, 20))
    assert (k, n_p) == (3, 6)
    assert torch.all((m[:, 0, ::12, ::12] == 0).sum(dim=(1, 2)) == 3)


def test_masking_determinism_across_batches():
    op = RandomMasking(0.5, patch=4)
    x = _images()
    seeds = [7, 8, 9, 10]
    d = op(x, seeds)
    parts = torch.cat([op(x[:2], seeds[:2]).mask, op(x[2:], seeds[2:]).mask])
    assert torch.equal(d.mask, parts)
    assert not torch.equal(d.mask[0], d.mask[1])


def test_registry():
    assert DEGRADATIONS == {"lowdose-xray": LowDoseXray, "kspace": KspaceUndersampling, "masking": RandomMasking}
    for cls in DEGRADATIONS.values():
        assert issubclass(cls, Degradation)
        assert cls.modality in ("xray", "mri", "any")
    op = make_degradation("masking", 0.4, patch=8)
    assert isinstance(op, RandomMasking) and op.level == 0.4 and op.patch == 8
    assert RandomMasking.level_name == "ratio" and RandomMasking.modality == "any"


def test_registry_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match=r"allowed names: \['kspace', 'lowdose-xray', 'masking'\]"):
        make_degradation("low-dose", 1000)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['pach'\].*'patch'"):
        make_degradation("masking", 0.5, pach=8)
    with pytest.raises(ValueError, match="level"):
        make_degradation("masking", 0.5, ratio=0.3)
    with pytest.raises(ValueError, match="ratio"):
        RandomMasking(1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "op",
    [RandomMasking(0.5, 8), KspaceUndersampling(4), LowDoseXray(3000), LowDoseXray(3000, model="sinogram", n_angles=32)],
)
def test_cuda_matches_cpu(op):
    x = _images()
    cpu = op(x, [1, 2, 3, 4])
    gpu = op(x.cuda(), [1, 2, 3, 4])
    assert gpu.image.is_cuda
    torch.testing.assert_close(gpu.image.cpu(), cpu.image, atol=2e-4, rtol=0)
    if cpu.mask is not None:
        assert torch.equal(gpu.mask.cpu(), cpu.mask)
