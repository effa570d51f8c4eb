"""The companion analyses through the engine: the aligned direct arm, regression, isolines, series."""

import json

import pandas as pd
import pytest

from reconaudit.engine.config import ConfigError, load_config
from reconaudit.engine.plan import build_plan
from reconaudit.engine.run import run_audit
from tests.engine.tiny import tiny_config

BRAIN = {"name": "brain-glioma",
         "params": {"n_subjects": 14, "slices_per_subject": 2, "size": 32,
                    "regression_columns": ["tumor_area_cm2", "infiltration_mm"], "isolines": [0.01, 0.25],
                    "time_points": [0.5, 1.0]},
         "tasks": {"segmentation": {"arch": "small-cnn", "params": {"epochs": 1}},
                   "regression": {"arch": "small-cnn", "params": {"epochs": 1}}},
         "degradations": [{"name": "kspace", "levels": [4], "params": {"pattern": "radial"}}]}


def _companions(**direct):
    return tiny_config(cohorts=[BRAIN], reconstructors=[{"name": "identity"}],
                       direct={"enabled": True, "input": "kspace", "alignment": "latent", **direct})


def test_alignment_adds_steps_without_changing_the_others():
    plain = build_plan(load_config(tiny_config()))
    aligned = build_plan(load_config(tiny_config(direct={"enabled": True, "alignment": "latent"})))
    assert not any(s.kind.startswith("aligned") for s in plain.steps.values())
    assert set(plain.steps) < set(aligned.steps)
    extra = {aligned.steps[s].kind for s in set(aligned.steps) - set(plain.steps)}
    assert extra == {"aligned_model", "aligned_score"}
    assert {c.cell_id for c in plain.cells} < {c.cell_id for c in aligned.cells}
    new = [c for c in aligned.cells if c.reconstructor == "direct-aligned"]
    assert len(new) == 2 and all(c.arm == "direct" for c in new)  # one per level


@pytest.mark.parametrize("direct, key", [({"alignment": "latnt"}, "direct.alignment"),
                                         ({"alignment_loss": "kl"}, "direct.alignment_loss"),
                                         ({"alignment_weight": 0}, "direct.alignment_weight")])
def test_bad_alignment_settings_name_the_key(direct, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(tiny_config(direct={"enabled": True, **direct}))


def test_regression_without_targets_names_the_key():
    cohort = {**BRAIN, "params": {"n_subjects": 14, "size": 32}}
    with pytest.raises(ConfigError, match=r"cohorts\.0\.tasks\.regression.*regression_columns"):
        load_config(tiny_config(cohorts=[cohort]))


def test_direct_aligned_label_is_reserved():
    with pytest.raises(ConfigError, match="reserved"):
        load_config(tiny_config(reconstructors=[{"name": "identity", "label": "direct-aligned"}]))


@pytest.mark.slow
def test_tiny_companions_audit_end_to_end(tmp_path):
    cfg = load_config(_companions(alignment_loss="infonce"))
    run_audit(cfg, tmp_path, report=True)
    rec = pd.read_parquet(tmp_path / "records.parquet")
    assert set(rec["reconstructor"]) == {"identity", "direct", "direct-aligned"}
    assert set(rec.loc[rec["reconstructor"] == "direct-aligned", "arm"]) == {"direct"}
    assert set(rec["task"]) == {"regression+segmentation"}
    for name in ("tumor_area_cm2", "infiltration_mm"):
        assert rec[f"reg_target:{name}"].notna().all() and rec[f"pred:{name}"].notna().all()
        # the clean prediction is the same model on the same clean image in every cell
        assert rec.groupby("study_id")[f"clean_pred:{name}"].nunique().max() == 1
    assert rec["isoline_dice:0.01"].between(0, 1).all() and rec["clean_isoline_dice:0.25"].between(0, 1).all()
    assert {"series_id", "time_index", "growth_days", "true_seg_volume"} <= set(rec.columns)
    # the aligned model's artifact records its alignment
    meta = json.loads((tmp_path / "run.json").read_text())
    step = next(s for s in meta["timing"]["steps"] if s.startswith("aligned_model/"))
    info = json.loads((tmp_path / "store" / step / "info.json").read_text())
    assert info["history"]["alignment"]["loss"] == "infonce" and info["teacher"]
    html = (tmp_path / "report" / "report.html").read_text()
    for title in ("Three ways to diagnose", "Infiltration: Dice at concentration isolines", "Regression of phenotypes",
                  "Measured growth over time"):
        assert title in html
    ways = pd.read_csv(tmp_path / "report" / "tables" / "three-ways.csv")
    assert set(ways["way"]) == {"reconstruct-then-diagnose", "direct, unaligned", "direct, aligned"}
    assert {"sex: F", "sex: M"} <= set(ways.columns)
