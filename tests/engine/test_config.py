"""Config validation: every error names the key path and the allowed values."""

import pytest

from reconaudit.engine.config import ConfigError, load_config
from tests.engine.tiny import tiny_config


def test_valid_tiny_config_loads():
    cfg = load_config(tiny_config())
    assert cfg.cohorts[0].name == "chest-xray"
    assert [r.display for r in cfg.reconstructors] == ["identity", "unet"]


def test_bundled_quickstart_is_valid():
    cfg = load_config("quickstart")
    assert {c.name for c in cfg.cohorts} == {"chest-xray", "brain-glioma"}


def test_typo_in_top_level_key_names_it():
    raw = tiny_config()
    raw["reconstuctors"] = raw.pop("reconstructors")
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "reconstuctors" in str(e.value)
    assert "unknown key" in str(e.value)


def test_unknown_reconstructor_names_key_path_and_allowed_values():
    raw = tiny_config()
    raw["reconstructors"][1]["name"] = "unnet"
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    msg = str(e.value)
    assert "reconstructors.1.name" in msg and "unnet" in msg
    assert "identity" in msg and "irsde" in msg  # the allowed values


def test_wrong_type_names_key_path():
    raw = tiny_config()
    raw["seeds"] = "zero"
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "seeds" in str(e.value)


def test_unknown_cohort_and_bad_cohort_param():
    raw = tiny_config()
    raw["cohorts"][0]["name"] = "chest-xrays"
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "cohorts.0.name" in str(e.value) and "brain-glioma" in str(e.value)
    raw = tiny_config()
    raw["cohorts"][0]["params"]["n_studys"] = 10
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "cohorts.0.params" in str(e.value) and "n_studys" in str(e.value)


def test_bad_reconstructor_param_and_degradation_name():
    raw = tiny_config()
    raw["reconstructors"][1]["params"]["epochz"] = 1
    raw["cohorts"][0]["degradations"][0]["name"] = "lowdose"
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    msg = str(e.value)
    assert "reconstructors.1.params" in msg and "epochz" in msg
    assert "cohorts.0.degradations.0.name" in msg and "lowdose-xray" in msg


def test_degradation_for_wrong_modality_is_rejected():
    raw = tiny_config()
    raw["cohorts"][0]["degradations"][0] = {"name": "kspace", "levels": [4]}
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "cohorts.0.degradations.0.name" in str(e.value) and "mri" in str(e.value)


def test_mitigation_must_name_existing_reconstructor():
    raw = tiny_config(mitigations=[{"name": "eodd", "reconstructors": ["pix2pix"]}])
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "mitigations.0.reconstructors" in str(e.value) and "unet" in str(e.value)


def test_unknown_mitigation_name_lists_allowed():
    raw = tiny_config(mitigations=[{"name": "eod"}])
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "mitigations.0.name" in str(e.value) and "reweighting" in str(e.value)


def test_yaml_file_and_bad_yaml(tmp_path):
    import yaml

    p = tmp_path / "a.yaml"
    p.write_text(yaml.safe_dump(tiny_config()))
    assert load_config(p).name == "tiny"
    bad = tmp_path / "b.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="neither a file nor a bundled config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("edit", "where", "what"),
    [
        (lambda r: r.update(seeds=[0, 0]), "seeds", "seed 0 is listed twice"),
        (lambda r: r["cohorts"][0]["degradations"][0].update(levels=[1000, 1000.0]),
         "cohorts.0.degradations.0.levels", "level 1000 is listed twice"),
        (lambda r: r.update(mitigations=[{"name": "eodd", "strengths": [0.5, 0.5]}]), "mitigations.0.strengths",
         "strength 0.5 is listed twice"),
        (lambda r: r.update(mitigations=[{"name": "eodd", "strengths": []}]), "mitigations.0.strengths",
         "at least 1 item"),
        (lambda r: r["reconstructors"].append({"name": "identity"}), "", "label 'identity' is used twice"),
    ],
)
def test_duplicate_and_empty_grid_entries_are_refused(edit, where, what):
    raw = tiny_config()
    edit(raw)
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert what in str(e.value) and where in str(e.value)


@pytest.mark.parametrize(("params", "key", "need"), [
    ({"n_studies": 3, "size": 32}, "n_studies=3", "use at least"),
    ({"n_studies": 72, "size": 32, "split_fractions": (0.98, 0.01, 0.01)}, "n_studies=72", "use at least"),
])
def test_a_cohort_too_small_to_split_is_refused_at_load_time(params, key, need):
    raw = tiny_config()
    raw["cohorts"][0]["params"] = params
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert f"cohorts.0.params: {key} is too small" in str(e.value) and need in str(e.value)


def test_the_smallest_size_named_is_enough():
    from reconaudit.cohorts import make_cohort, validate_cohort_params
    from reconaudit.engine.validate import check_split_sizes

    with pytest.raises(ValueError, match="use at least") as e:
        check_split_sizes(validate_cohort_params("chest-xray", {"n_studies": 4, "size": 32}))
    need = int(str(e.value).rsplit(" ", 1)[-1])
    c = make_cohort("chest-xray", n_studies=need, size=32)
    assert all(len(c.indices(s)) >= 1 for s in ("train", "val", "test"))
    check_split_sizes(validate_cohort_params("chest-xray", {"n_studies": need, "size": 32}))


def test_degradation_parameter_errors_are_reported_under_params_once():
    raw = tiny_config()
    raw["cohorts"][0]["degradations"][0]["params"] = {"model": "bogus"}
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    msg = str(e.value)
    assert "cohorts.0.degradations.0.params: LowDoseXray: model must be one of" in msg
    assert "levels" not in msg and msg.count("model must be") == 1
    raw = tiny_config()
    raw["cohorts"][0]["degradations"][0]["levels"] = [1000, -5]
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert "cohorts.0.degradations.0.levels.1: LowDoseXray: photons must be" in str(e.value)


def test_analysis_definitions_and_guards():
    cfg = load_config(tiny_config(analysis={"definitions": "study", "min_group_patients": 3}))
    assert cfg.analysis.definitions == "study" and cfg.analysis.min_group_patients == 3
    assert cfg.analysis.min_group_positives == 2 and cfg.analysis.max_undefined_share == 0.01
    with pytest.raises(ConfigError, match="analysis.definitions"):
        load_config(tiny_config(analysis={"definitions": "paper"}))
    with pytest.raises(ConfigError, match="analysis.max_undefined_share"):
        load_config(tiny_config(analysis={"max_undefined_share": 2}))


def test_analysis_intersections_need_two_distinct_attributes():
    from reconaudit.engine.config import AnalysisConfig

    assert AnalysisConfig(intersections=[["sex", "age_band"]]).intersections == [["sex", "age_band"]]
    assert AnalysisConfig().intersections is None
    for bad in ([["sex"]], [["sex", "sex"]]):
        with pytest.raises(ValueError, match=r"analysis.intersections\[0\]"):
            AnalysisConfig(intersections=bad)
