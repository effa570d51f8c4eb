"""fastMRI multi-coil files: RSS reference, measured coil k-space, mixed folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from reconaudit.cohorts.fastmri import load_fastmri, multicoil_rss
from reconaudit.physics import make_degradation
from reconaudit.physics.coils import rss
from reconaudit.physics.mri import ifft2c

_spec = importlib.util.spec_from_file_location("reconaudit_test_cohort_fixtures", Path(__file__).with_name("fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def _np_birdcage(c: int, h: int, w: int) -> np.ndarray:
    cc, y, x = np.mgrid[:c, :h, :w]
    xc = (x - w / 2) / (w / 2) - 1.5 * np.cos(cc * 2 * np.pi / c)
    yc = (y - h / 2) / (h / 2) - 1.5 * np.sin(cc * 2 * np.pi / c)
    return (1 / np.hypot(xc, yc)) * np.exp(1j * (np.arctan2(xc, -yc) - cc * 2 * np.pi / c))


def write_multicoil(root: Path, name: str, coils: int, seed: int, h: int = 32, w: int = 24, crop: int = 20) -> np.ndarray:
    """A fastMRI multi-coil layout file: kspace (slices, coils, h, w), reconstruction_rss (slices, crop, crop)."""
    import h5py

    img = fx.fastmri_image(n_slices=5, h=h, w=w, seed=seed)
    coil_imgs = _np_birdcage(coils, h, w)[None] * img[:, None]
    k = fx.np_fft2c(coil_imgs).astype(np.complex64)
    r = np.sqrt((np.abs(fx.np_ifft2c(k.astype(np.complex128))) ** 2).sum(1))
    top, left = (h - crop) // 2, (w - crop) // 2
    r = r[:, top : top + crop, left : left + crop].astype(np.float32)
    with h5py.File(root / name, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("reconstruction_rss", data=r)
        f.attrs["acquisition"] = "AXFLAIR"
        f.attrs["patient_id"] = f"pt-{name}"
    return r


@pytest.fixture()
def mc_root(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "multicoil_val"
    root.mkdir()
    refs = {"file2000001": write_multicoil(root, "file2000001.h5", 4, 0),
            "file2000002": write_multicoil(root, "file2000002.h5", 3, 1)}
    return root, refs


def test_rss_of_loaded_multicoil_file_equals_reconstruction_rss(mc_root):
    root, refs = mc_root
    import h5py

    with h5py.File(root / "file2000001.h5", "r") as f:
        k = torch.from_numpy(f["kspace"][()])
        ref = f["reconstruction_rss"][()]
    ours = multicoil_rss(k, (20, 20)).numpy()
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-5
    c = load_fastmri(root=root, size=20, slices=3)
    assert c.kspace.shape == (6, 4, 20, 20) and c.kspace.dtype == torch.complex64
    assert c.table["coils"].tolist() == [4, 4, 4, 3, 3, 3]
    for j, (stem, r) in enumerate(refs.items()):
        rows = slice(3 * j, 3 * j + 3)
        got = c.images[rows, 0].numpy() * c.table["kspace_scale"].iloc[3 * j]
        want = r[1:4]  # the middle 3 of 5 slices
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5, stem
    # the kept coil k-space is consistent with the image, and the padded coil of the 3-coil file is empty
    torch.testing.assert_close(rss(ifft2c(c.kspace)), c.images, atol=1e-5, rtol=0)
    assert float(c.kspace[3:, 3].abs().max()) == 0.0
    # undersampling the measured coils (coils=0) keeps all of them
    d = make_degradation("kspace", 4, coils=0, center_fraction=0.2)(c.images, list(range(6)), kspace=c.kspace)
    assert d.kspace.shape == (6, 4, 20, 20)


def test_mixed_folder_reads_file_by_file(mc_root, tmp_path):
    root, _ = mc_root
    single_root = fx.write_fastmri(tmp_path / "single", n_files=1)
    (root / "file1000001.h5").write_bytes((single_root / "file1000001.h5").read_bytes())
    c = load_fastmri(root=root, size=20, slices=3)
    assert c.table["coils"].tolist() == [1, 1, 1, 4, 4, 4, 3, 3, 3]
    alone = load_fastmri(root=single_root, size=20, slices=3)
    torch.testing.assert_close(c.images[:3], alone.images)
    torch.testing.assert_close(c.kspace[:3, :1], alone.kspace)
    assert float(c.kspace[:3, 1:].abs().max()) == 0.0
    torch.testing.assert_close(rss(ifft2c(c.kspace)), c.images, atol=1e-5, rtol=0)
    # resizing keeps the RSS / k-space consistency for multi-coil files too
    c8 = load_fastmri(root=root, size=8, slices=2)
    torch.testing.assert_close(rss(ifft2c(c8.kspace)), c8.images, atol=1e-5, rtol=0)


def test_mixed_folder_written_shard_by_shard_is_the_cohort_loaded_in_memory(mc_root, tmp_path):
    """write_cohort (shards of 2 slices) and write_fastmri (3) store what make_cohort returns for a folder of 1-, 4- and
    3-coil files (k-space zero-padded to 4 coils), with labelled slices only: same bits, table, card, drops."""
    import pandas as pd

    from reconaudit.cohorts import Cohort, make_cohort, write_cohort
    from reconaudit.cohorts.fastmri import FastmriParams, write_fastmri

    root, _ = mc_root
    single_root = fx.write_fastmri(tmp_path / "single", n_files=1)
    (root / "file1000001.h5").write_bytes((single_root / "file1000001.h5").read_bytes())
    pd.DataFrame({"file": ["file1000001", "file2000001", "file2000001", "file2000002"], "slice": [2, 1, 3, 2],
                  "tear": [1, 0, 1, 0]}).to_csv(root / "labels.csv", index=False)
    params = dict(root=root, size=8, slices=3, labels_csv="labels.csv")
    mem = make_cohort("fastmri", **params)
    assert len(mem) == 4 and mem.kspace.shape == (4, 4, 8, 8) and mem.meta["dropped"]["by_reason"] == {"no label": 5}
    write_cohort("fastmri", tmp_path / "s2", shard_studies=2, **params)
    fx.assert_same_cohort(Cohort.load(tmp_path / "s2"), mem)
    write_fastmri(FastmriParams(**params), tmp_path / "s3", shard_studies=3)
    fx.assert_same_cohort(Cohort.load(tmp_path / "s3"), mem)
