"""build_report(): files written, no identifiers, every user string escaped, self-contained HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fake_records import EVIL_SEX

from reconaudit.report.analysis import analyse
from reconaudit.report.figures import _fig_mitigation
from reconaudit.report.markdown import render_markdown


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_figures_and_tables_written(built_report):
    out = built_report.parent
    stems = ["fig1_performance_vs_level", "fig2_bias_change", "fig3_mitigation", "fig3b_lambda_sweep",
             "fig4_examples_0-brain-mri", "fig4_examples_1-chest-xray", "fig5_roc_1-chest-xray"]
    for stem in stems:
        png, pdf = out / "figures" / f"{stem}.png", out / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, stem
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, stem
    for name in ("summary", "task", "fairness"):
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0


def test_report_has_no_identifiers(built_report, fake_inputs):
    records, _ = fake_inputs
    html = built_report.read_text(encoding="utf-8")
    files = [built_report] + sorted((built_report.parent / "tables").iterdir())
    texts = [f.read_text(encoding="utf-8") for f in files]
    ids = set(records["study_id"]) | set(records["patient_id"])
    for text in texts:
        assert not any(i in text for i in ids)
        assert "study_id" not in text and "patient_id" not in text
    assert "study #0" not in html  # examples appear inside images only, by index


def test_user_strings_are_escaped(built_report):
    html = built_report.read_text(encoding="utf-8")
    p = _parse(html)
    tags = {t for t, _ in p.tags}
    assert "script" not in tags and "<script" not in html.lower()
    assert not any(t == "b" for t, _ in p.tags)  # "<b>F</b>" group name and failure text never become markup
    assert not any(t == "i" for t, _ in p.tags)  # "<i>markup</i>" in the data card stays text
    text = "".join(p.text)
    for name in EVIL_SEX:
        assert name in text  # shown, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;b&gt;F&lt;/b&gt;" in html
    assert "CUDA <b>out of memory</b> & more" in text  # the failure message, escaped


def test_report_is_self_contained_with_contents_and_sections(built_report):
    html = built_report.read_text(encoding="utf-8")
    p = _parse(html)
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) >= 7 and all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert not any(t == "link" for t, _ in p.tags)
    ids = {a.get("id") for _, a in p.tags}
    hrefs = [a["href"][1:] for t, a in p.tags if t == "a" and a.get("href", "").startswith("#")]
    assert hrefs and set(hrefs) <= ids  # every contents link has a target
    text = "".join(p.text)
    for needle in ("Summary", "Figures", "Fairness", "Configuration", "Software versions", "Failures",
                   "name: fake-audit", "PSNR fell", "Synthetic cohort"):
        assert needle in text
    assert "<h3>Synthetic cohort</h3>" in html and "<li>prevalence 35 %</li>" in html


def test_no_mitigation_no_mitigation_figure(fake_inputs, tmp_path):
    records, meta = fake_inputs
    r = records[(records["mitigation"] == "none") & (records["cohort"] == "brain-mri") & (records["seed"] == 0)]
    a = analyse(r, dict(meta, analysis=dict(meta["analysis"], n_resamples=20)))
    assert _fig_mitigation(a, tmp_path) == []
    assert not list(tmp_path.iterdir())


def test_markdown_renderer_is_safe():
    md = ("# Title <script>x</script>\n\nSome **bold** and *it* `code` <img src=x onerror=alert(1)>.\n\n"
          "- one\n- two & three\n\n1. first\n2. second\n\n| a | b |\n|---|---|\n| <b>1</b> | 2 |\n")
    html = render_markdown(md)
    assert "<h3>Title &lt;script&gt;x&lt;/script&gt;</h3>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html and "<code>code</code>" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "<ul><li>one</li><li>two &amp; three</li></ul>" in html
    assert "<ol><li>first</li><li>second</li></ol>" in html
    assert "<td>&lt;b&gt;1&lt;/b&gt;</td>" in html and "<th>a</th>" in html


@pytest.mark.parametrize(("text", "expected"), [
    ("", ""), ("plain <x>", "<p>plain &lt;x&gt;</p>"), ("#", "<p>#</p>"), ("| no | sep |", "<p>| no | sep |</p>"),
])
def test_markdown_renderer_edge_cases(text, expected):
    assert render_markdown(text) == expected


def test_report_has_a_definitions_section(built_report, analysis):
    html = built_report.read_text(encoding="utf-8")
    assert 'id="definitions"' in html and "Definitions in force: <strong>package</strong>" in html
    assert "max(TPR gap, FPR gap)" in html and "fixed on clean validation data" in html
    assert "biased upward" in html  # the note on max - min gap intervals
    assert len(analysis.definitions) >= 14  # one line per metric, plus threshold and change


def test_two_processes_write_the_same_report_as_one(fake_run, tmp_path):
    """With a forked figure process the report's tables, figures (PNG) and HTML equal the one-process
    report byte for byte (PDFs carry a creation date, so they are compared by name only)."""
    from reconaudit.report import build_report
    from reconaudit.report.html import report_jobs

    one = build_report(fake_run, tmp_path / "one", jobs=1).parent
    two = build_report(fake_run, tmp_path / "two", jobs=2).parent
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert any(f.suffix == ".png" for f in files) and any(f.suffix == ".csv" for f in files)
    for f in files:
        if f.suffix != ".pdf":
            assert (one / f).read_bytes() == (two / f).read_bytes(), f
    assert report_jobs(1) == 1 and report_jobs(5) == 2
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        report_jobs(0)
