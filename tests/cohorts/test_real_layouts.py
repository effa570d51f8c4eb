"""Quirks of the real dataset releases: group values, drops with named reasons, layouts as distributed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reconaudit.cohorts.base import CohortError
from reconaudit.cohorts.chexpert import load_chexpert
from reconaudit.cohorts.groups import UNKNOWN, band_ages, normalise_groups
from reconaudit.cohorts.manifest import load_manifest

_spec = importlib.util.spec_from_file_location("reconaudit_test_cohort_fixtures", Path(__file__).with_name("fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


# ------------------------------------------------------------------------------------------ group values
def test_normalise_groups_sex_synonyms_case_space_and_missing():
    raw = ["F ", "f", "Female", "FEMALE", " male", "M", "Male", "Unknown", "", None, np.nan, "N/A", "o"]
    out = normalise_groups(raw, "sex")
    assert list(out) == ["F", "F", "F", "F", "M", "M", "M", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "O"]
    # a user map is merged over the default; other attributes keep their most frequent spelling
    out = normalise_groups(["W", "w", "F"], "sex", {"sex": {"w": "F"}})
    assert list(out) == ["F", "F", "F"]
    race = normalise_groups(["White", "white ", "White", "Asian", "ASIAN  "], "race")
    # most frequent spelling wins; a tie goes to the first in sorted order ("ASIAN" < "Asian")
    assert list(race) == ["White", "White", "White", "ASIAN", "ASIAN"]


def test_band_ages_impossible_values_reported():
    from reconaudit.cohorts.groups import GroupReport

    rep = GroupReport()
    ages, bands = band_ages(np.array([0, -3, 35, 121, 120, np.nan, 60]), [40, 60, 80], rep,
                            where=[f"r{i}" for i in range(7)])
    assert list(bands) == [UNKNOWN, UNKNOWN, "<40", UNKNOWN, "80+", UNKNOWN, "60-79"]
    assert np.isnan(ages[[0, 1, 3, 5]]).all() and ages[2] == 35
    assert [e["where"] for e in rep.impossible_ages] == ["r0", "r1", "r3"]  # NaN is missing, not impossible


def _manifest(tmp_path: Path, sexes: list[str], ages: list[object], *, backslash: bool = False) -> Path:
    root = tmp_path / "m"
    rows = []
    for i, (sx, ag) in enumerate(zip(sexes, ages)):
        rel = f"images/s{i}.png"
        fx.gray(root / rel, 10 * i + 20)
        rows.append({"path": rel.replace("/", "\\") if backslash else rel, "patient_id": f"P{i}",
                     "finding": i % 2, "sex": sx, "age": ag})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_manifest_sex_synonyms_one_group_age_bands_and_backslashes(tmp_path):
    sexes = ["F ", "f", "Female", "M", "male", "Unknown", "", "F"]
    ages = [35, 0, 45, 61, 130, 82, "", 50]
    path = _manifest(tmp_path, sexes, ages, backslash=True)
    c = load_manifest(path=path, target_columns=["finding"], group_columns=["sex"], age_column="age", size=8)
    assert len(c) == 8  # backslash paths resolved
    assert c.group_attributes == ["sex", "age_band"]
    assert list(c.table["sex"]) == ["F", "F", "F", "M", "M", UNKNOWN, UNKNOWN, "F"]
    assert list(c.table["age_band"]) == ["<40", UNKNOWN, "40-59", "60-79", UNKNOWN, "80+", UNKNOWN, "40-59"]
    g = c.meta["groups"]
    assert g["unknown"] == {"sex": 2, "age_band": 3} and g["impossible_ages"] == 2
    assert g["unknown_groups"] == "exclude"
    assert [e["value"] for e in g["impossible_age_entries"]] == [0.0, 130.0]
    assert "row 1 (line 3), column 'age'" in g["impossible_age_entries"][0]["where"]
    assert "## Group values" in c.data_card and "impossible age" in c.data_card
    assert c.table["study_id"].tolist()[0] == "images/s0"
    # a numeric age among group_columns would make one group per age: an error naming the fix
    with pytest.raises(CohortError, match="set age_column: age"):
        load_manifest(path=path, target_columns=["finding"], group_columns=["age"], size=8)


def test_chexpert_age_zero_reported_and_sex_merged(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for i, (sex, age) in enumerate([("Male", 0), ("Female", 55), ("female", 70), ("Unknown", 30), ("M", 44)]):
        rel = f"train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        fx.gray(root / rel, 40 + 10 * i)
        rows.append({"Path": f"{root.name}/{rel}", "Sex": sex, "Age": age, "Frontal/Lateral": "Frontal",
                     "AP/PA": "PA", **{k: "" for k in fx.FINDINGS}, "Edema": i % 2})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    c = load_chexpert(root=root, size=8, labels=["Edema"])
    t = c.table.set_index("patient_id")
    assert t.loc["patient00001", "age_band"] == UNKNOWN and np.isnan(t.loc["patient00001", "age"])
    assert list(c.table["sex"]) == ["M", "F", "F", UNKNOWN, "M"]
    assert c.meta["groups"]["impossible_ages"] == 1
    assert "train.csv: row 0 (line 2), column 'Age'" in c.meta["groups"]["impossible_age_entries"][0]["where"]
    assert "1 impossible age(s)" in c.data_card
