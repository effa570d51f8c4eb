"""The run directory: its lock, stale temporaries, and Markdown outputs that keep user strings inert."""

import os

import pandas as pd
import pytest

from reconaudit.engine.records import _markdown
from reconaudit.engine.run import RunLockedError, clean_stale_temporaries, run_lock
from reconaudit.report.markdown import markdown_text
from reconaudit.report.tables import to_markdown


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLockedError) as e, run_lock(tmp_path):
            pass
        assert f"pid {os.getpid()}" in str(e.value) and "started" in str(e.value)
    with run_lock(tmp_path):  # released when the holder ends
        pass


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".records.parquet.k2j3.tmp").write_bytes(b"half")
    (tmp_path / ".run.json.x.tmp").write_text("{")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "abc.npz.tmp").write_bytes(b"")
    (tmp_path / ".report-1234abcd").mkdir()
    (tmp_path / "records.parquet").write_bytes(b"kept")
    assert clean_stale_temporaries(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["examples", "records.parquet"]


HOSTILE = ["<script>alert(1)</script>", "a|b", "**bold**", "x\ny", "[link](javascript:alert(1))"]


@pytest.mark.parametrize("write", [_markdown, to_markdown])
def test_markdown_tables_keep_user_strings_inert(write):
    df = pd.DataFrame({"cohort": HOSTILE, "value": [1.0, 2.0, 3.0, 4.0, 5.0]})
    md = write(df)
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert md.count("\n") == 2 + len(HOSTILE)  # one line per row: no row broken by | or a newline
    assert all(line.count("|") - line.count("\\|") == 3 for line in md.splitlines()[2:])
    assert "](" not in md and "\\*\\*bold\\*\\*" in md


def test_markdown_text_round_trips_through_the_report_renderer():
    from reconaudit.report.markdown import render_markdown

    for s in HOSTILE:
        html = render_markdown(markdown_text(s))
        assert "<script>" not in html and "<strong>" not in html and "<a " not in html
