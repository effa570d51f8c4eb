import numpy as np
import pandas as pd
import pytest

from reconaudit.metrics import group_mean_summary, psnr, region_masks, region_quality


def _case():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.2, 0.8, size=(3, 1, 32, 32))
    body = np.zeros_like(y, dtype=bool)
    body[:, :, 4:28, 4:28] = True
    lesion = np.zeros_like(body)
    lesion[0, :, 10:14, 10:14] = True
    lesion[1, :, 8:16, 8:12] = True  # study 2 has no lesion
    return y, body, lesion


def test_regions_are_disjoint_and_cover_the_image():
    _, body, lesion = _case()
    r = region_masks(lesion, body)
    total = r["lesion"].astype(int) + r["tissue"] + r["background"]
    assert (total == 1).all()


def test_error_confined_to_the_lesion_gives_the_analytic_values():
    y, body, lesion = _case()
    delta = 0.1
    x = y + delta * lesion
    q = region_quality(x, y, lesion, body)
    np.testing.assert_allclose(q["psnr:lesion"][:2], 10 * np.log10(1 / delta**2))
    assert np.isnan(q["psnr:lesion"][2])  # no lesion
    assert np.isinf(q["psnr:tissue"]).all() and np.isinf(q["psnr:background"]).all()
    np.testing.assert_allclose(q["nmse:tissue"], 0.0)
    for i in range(2):
        m = lesion[i, 0]
        np.testing.assert_allclose(q["nmse:lesion"][i], delta**2 * m.sum() / (y[i, 0][m] ** 2).sum())
    # the whole-image PSNR hides the lesion: it is 10 log10(|image| / |lesion|) dB higher
    whole = psnr(x, y)
    np.testing.assert_allclose(whole[:2] - q["psnr:lesion"][:2], 10 * np.log10(32 * 32 / lesion[:2].sum((1, 2, 3))))
    # SSIM is 1 wherever no window touches the lesion: the background
    np.testing.assert_allclose(q["ssim:background"], 1.0)
    assert (q["ssim:lesion"][:2] < 1).all()


def test_mismatched_mask_shape_is_rejected():
    y, body, lesion = _case()
    with pytest.raises(ValueError, match="body"):
        region_masks(lesion, body[:, :, :16])


def test_group_summary_means_gap_and_intervals():
    rng = np.random.default_rng(1)
    n = 60
    df = pd.DataFrame({
        "cohort": "c", "degradation": "d", "level": 1.0, "reconstructor": "r", "mitigation": "none",
        "patient_id": [f"p{i // 2}" for i in range(n)],
        "group:sex": np.where(np.arange(n) % 4 < 2, "F", "M"),
        "region_psnr:lesion": rng.normal(30, 1, n),
    })
    df.loc[df["group:sex"] == "M", "region_psnr:lesion"] += 3.0
    df.loc[0, "region_psnr:lesion"] = np.inf  # an exact region is left out
    df.loc[3, "group:sex"] = None  # so is a study without a group value
    out = group_mean_summary(df, ["region_psnr:lesion"], ["sex"], n_resamples=400)
    finite = df[np.isfinite(df["region_psnr:lesion"]) & df["group:sex"].notna()]
    means = finite.groupby("group:sex")["region_psnr:lesion"].mean()
    got = out.set_index("group")
    np.testing.assert_allclose(got.loc["F", "value"], means["F"])
    np.testing.assert_allclose(got.loc["M", "value"], means["M"])
    np.testing.assert_allclose(got.loc["(gap)", "value"], means["M"] - means["F"])
    assert got.loc["F", "n"] == 29 and got.loc["M", "n"] == 29 and set(got.index) == {"F", "M", "(gap)"}
    for g in ("F", "M", "(gap)"):
        assert got.loc[g, "ci_low"] < got.loc[g, "value"] < got.loc[g, "ci_high"]
    assert got.loc["(gap)", "ci_low"] > 1.5  # a 3 dB gap with 30 studies a group is clearly non-zero
    with pytest.raises(KeyError, match="region_psnr:tissue"):
        group_mean_summary(df, ["region_psnr:tissue"], ["sex"])
