"""The score step's region_* and gen_* columns on hand-made studies with known answers."""

import numpy as np
import pandas as pd
import torch

from reconaudit.cohorts.base import Cohort
from reconaudit.engine.generative import COVERAGE_LEVELS, generative_columns
from reconaudit.physics.base import Degraded


class _Stub:
    """A 'diagnostic model' whose features are the image's mean and its mean over a fixed corner."""

    thresholds = np.array([0.5])

    def features(self, x):
        return torch.stack([x.mean((1, 2, 3)), x[:, :, :8, :8].mean((1, 2, 3))], 1)

    def predict(self, x):
        return (x > 0.7).float().numpy()


def _cohort(n=6, h=32):
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.uniform(0.2, 0.6, (n, 1, h, h)), dtype=torch.float32)
    body = torch.zeros((n, 1, h, h), dtype=torch.bool)
    body[:, :, 2:30, 2:30] = True
    lesion = torch.zeros_like(body)
    lesion[:, :, 10:16, 10:16] = True
    table = pd.DataFrame({"study_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                          "split": "test"})
    return Cohort(name="toy", modality="xray", images=images, table=table, roi_masks=body, lesion_masks=lesion,
                  masks=lesion.to(torch.uint8))


def test_columns_on_a_lesion_only_error_and_a_gaussian_posterior():
    c = _cohort()
    te = np.arange(len(c))
    clean = c.images
    gen = torch.Generator().manual_seed(0)
    sigma = 0.05
    samples = clean[:, None] + sigma * torch.randn((len(c), 4, 1, 32, 32), generator=gen)
    mean = clean + 0.2 * c.lesion_masks.float()  # a planted brightening of the lesion, nothing else
    recon = {"mean": mean, "samples": samples, "std": samples.std(1, unbiased=True)}
    deg = Degraded(clean + 0.01 * torch.randn(clean.shape, generator=gen))
    seg = np.zeros((len(c), 1, 32, 32), dtype=np.uint8)
    seg[:, :, 0:2, 0:3] = 1  # 6 false-positive pixels per study
    cols = generative_columns(c, te, clean, recon, deg, {"segmentation": _Stub()}, seg)
    np.testing.assert_allclose(cols["region_psnr:lesion"], 10 * np.log10(1 / 0.2**2), rtol=1e-5)
    assert np.isinf(cols["region_psnr:background"]).all() and np.isinf(cols["region_psnr:tissue"]).all()
    np.testing.assert_allclose(cols["gen_fp_volume"], 6.0)
    np.testing.assert_allclose(cols["gen_seg_volume"], 6.0)
    # the planted brightening is a hallucination; nothing is erased
    assert (cols["gen_hallucination_fraction"] > 0.8 * 36 / 28**2).all()
    np.testing.assert_allclose(cols["gen_erasure_fraction"], 0.0)
    for p in COVERAGE_LEVELS:
        assert f"gen_coverage:{p:g}" in cols
    # features move only through the image mean: distance = 0.2 * 36 / 1024 (the corner is untouched)
    np.testing.assert_allclose(cols["gen_feature_distance"], 0.2 * 36 / 1024, rtol=1e-4)
    assert cols["gen_frechet"] >= 0


def test_direct_arm_gets_no_image_columns():
    c = _cohort()
    deg = Degraded(c.images)
    cols = generative_columns(c, np.arange(len(c)), c.images, None, deg, {"classification": _Stub()}, None)
    assert cols == {}


def test_bundled_generative_config_sweeps_masking_over_every_reconstructor():
    from reconaudit.engine.config import load_config
    from reconaudit.recon import RECONSTRUCTORS

    cfg = load_config("generative")
    deg = cfg.cohorts[0].degradations[0]
    assert deg.name == "masking" and list(deg.levels) == [0.25, 0.5, 0.75, 0.9]
    names = {r.name for r in cfg.reconstructors}
    assert {"identity", "classical", "unet", "pix2pix", "irsde"} <= names
    assert next(r for r in cfg.reconstructors if r.name == "irsde").samples > 1
    assert names <= set(RECONSTRUCTORS)
