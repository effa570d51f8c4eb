"""The command line: cohorts listing, config errors with exit code 2, plan without a run."""

from typer.testing import CliRunner

from reconaudit.cli import app

runner = CliRunner()


def test_cohorts_lists_all_six():
    res = runner.invoke(app, ["cohorts"], terminal_width=200)
    assert res.exit_code == 0
    for name in ("chest-xray", "brain-glioma", "chexpert", "ucsf-pdgm", "fastmri", "manifest"):
        assert name in res.output


def test_config_error_exits_2_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncohorts: []\nreconstructors: [{name: unnet}]\n")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "cohorts" in res.output
    assert not (tmp_path / "run").exists()  # nothing started


def test_plan_of_the_quickstart_without_running(tmp_path):
    res = runner.invoke(app, ["plan", "quickstart", "--out", str(tmp_path / "none")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "37 cells" in res.output and "0 done" in res.output
    assert not (tmp_path / "none").exists()


def test_report_needs_records(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "records.parquet" in res.output
