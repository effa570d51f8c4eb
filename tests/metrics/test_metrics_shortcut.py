"""The shortcut probe: AUROC near 0.5 without group signal, near 1 with an injected group marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reconaudit.metrics as M


def _images(rng, n, marker: bool):
    x = rng.random((n, 1, 32, 32)).astype(np.float32) * 0.5 + 0.25
    grp = np.where(np.arange(n) % 2 == 0, "F", "M")
    if marker:
        x[grp == "M", :, 2:6, 2:6] = 1.0  # a bright corner square for one group
    return x, grp


def test_logistic_probe_on_features_without_and_with_group_signal():
    rng = np.random.default_rng(0)
    n = 240
    grp = np.where(rng.random(n) < 0.5, "F", "M")
    pid = np.arange(n) // 2
    grp = grp[pid * 2]  # one group per patient
    noise = rng.normal(size=(n, 16))
    marked = noise.copy()
    marked[:, 3] += 6.0 * (grp == "M")
    res = M.shortcut_probe(noise, marked, sensitive_features=grp, patient_ids=pid, n_resamples=100, seed=0)
    r = res.set_index("arm")
    assert r.loc["clean", "estimate"] == pytest.approx(0.5, abs=0.1)
    assert r.loc["recon", "estimate"] > 0.95
    assert bool(r.loc["change", "more_predictable"]) and r.loc["change", "ci_low"] > 0.3
    # three groups: macro one-vs-rest AUROC
    g3 = np.array(["a", "b", "c"])[pid % 3]
    f3 = rng.normal(size=(n, 8))
    f3[:, 0] += 4.0 * (g3 == "b")
    f3[:, 1] += 4.0 * (g3 == "c")
    s, labels = M.probe_scores(f3, g3, pid)
    assert list(labels) == ["a", "b", "c"] and M.probe_auroc(s, g3) > 0.95


def test_probe_folds_keep_patients_together():
    pid = np.repeat(np.arange(30), 3)
    g = np.where(pid % 2 == 0, "A", "B")
    f = M.probe_folds(g, pid, n_splits=5)
    assert all(len(set(f[pid == p])) == 1 for p in range(30))
    with pytest.raises(ValueError, match="two groups"):
        M.probe_folds(np.zeros(10), np.arange(10))


@pytest.mark.parametrize("marker,expect", [(False, 0.5), (True, 1.0)])
def test_cnn_probe_on_images(marker, expect):
    from reconaudit.tasks.shortcut import cnn_probe_scores

    rng = np.random.default_rng(1)
    x, grp = _images(rng, 96, marker)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s, _ = cnn_probe_scores(torch.from_numpy(x), grp, np.arange(96), n_splits=2, epochs=5, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert M.probe_auroc(s, grp) == pytest.approx(expect, abs=0.15 if not marker else 0.05)
