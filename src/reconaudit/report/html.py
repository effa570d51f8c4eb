"""The self-contained HTML report of an audit run.

:func:`build_report` reads ``RUN_DIR/records.parquet`` (a cell at a time) and ``RUN_DIR/run.json`` (and the example
studies in ``RUN_DIR/examples/``), runs :func:`~reconaudit.report.analysis.analyse`, writes the
tables (CSV, Markdown, LaTeX) and figures (PNG, PDF), and renders one ``report.html`` that opens
offline: figures are embedded as base64 PNG, styles are inline, and there is no script, external
stylesheet or font.  Every string that comes from the user's data (cohort, label and group names,
config values, data cards) is HTML-escaped by jinja2's autoescaping; data cards pass through a
small Markdown renderer that escapes before adding markup.  Study and patient identifiers never
reach the report: studies are shown by their anonymous ``study_index``.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from .. import __version__
from ..engine.records import Records
from .analysis import Analysis, analyse
from .companions import companion_sections
from .depth import analyse_depth, write_depth
from .figures import Figure, render_figures
from .generative import GenerativeSection, generative_section
from .markdown import render_markdown
from .tables import formatted_tables, write_tables

logger = logging.getLogger(__name__)

__all__ = ["build_report", "load_run", "open_run", "render_html"]

_TEMPLATES = Path(__file__).parent / "templates"
_WRAP_COLUMNS = {"note", "groups (n)", "description", "in words", "methods"}


def open_run(run_dir: Path | str) -> tuple[Records, dict]:
    """Open ``records.parquet`` (lazily, as :class:`~reconaudit.engine.records.Records`: the report
    reads it a cell at a time) and read ``run.json`` of a run directory.

    Raises
    ------
    FileNotFoundError
        Naming the missing file and how it is produced.
    """
    run_dir = Path(run_dir)
    rec_path, meta_path = run_dir / "records.parquet", run_dir / "run.json"
    for p in (rec_path, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found; run the audit first (`reconaudit run CONFIG`) so that "
                                    f"{run_dir} holds records.parquet and run.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc})") from exc
    return Records(rec_path), meta


def load_run(run_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    """``records.parquet`` as one table in memory and ``run.json`` of a run directory (small runs;
    :func:`open_run` reads the records lazily)."""
    records, meta = open_run(run_dir)
    return records.frame(), meta


def _png_width(path: Path) -> int:
    with open(path, "rb") as fh:
        head = fh.read(24)
    return struct.unpack(">I", head[16:20])[0] if head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def _table(df: pd.DataFrame) -> dict:
    cols = [c for c in df.columns if not c.startswith("_")]
    sig = df["_significant"].to_numpy(bool) if "_significant" in df else np.zeros(len(df), bool)
    return {
        "columns": cols,
        "rows": [{"sig": bool(s), "cells": ["" if v is None else str(v) for v in row]}
                 for s, row in zip(sig, df[cols].itertuples(index=False))],
        "wrap": {i for i, c in enumerate(cols) if c in _WRAP_COLUMNS},
    }


def _drop_columns(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    return df.drop(columns=[c for c in cols if c in df.columns])


def _yaml_text(meta: dict) -> str:
    text = meta.get("config_yaml")
    if text:
        return str(text)
    cfg = meta.get("config")
    if cfg is None:
        return "(no configuration recorded)"
    try:
        import yaml

        return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    except Exception:  # pragma: no cover - yaml is a dependency; fall back to JSON
        return json.dumps(cfg, indent=2, default=str)


def _figure_dict(f: Figure, number: int) -> dict:
    data = base64.b64encode(f.png.read_bytes()).decode("ascii")
    width = _png_width(f.png)
    return {"id": f"fig-{f.key}", "number": number, "title": f.title, "caption": f.caption, "data": data,
            "files": f"figures/{f.png.name}, figures/{f.pdf.name}", "width": min(width, 1100) if width else 1000}


def _depth_sections(depth: list[dict], first_figure: int) -> list[dict]:
    """The sections of :func:`reconaudit.report.depth.write_depth`, tables and figures ready for the template."""
    out, n = [], first_figure
    for sec in depth:
        figs = []
        for f in sec["figures"]:
            figs.append(_figure_dict(f, n))
            n += 1
        out.append({**sec, "figures": figs, "tables": [{"title": t, "table": _table(df)} for t, df in sec["tables"]]})
    return out


def render_html(analysis: Analysis, meta: dict, figures: list[Figure], out_path: Path | str,
                depth: list[dict] | None = None, generative: GenerativeSection | None = None,
                companions: list[dict] | None = None) -> Path:
    """Render ``report.html`` from an analysis, the run description, the written figures and the depth sections.

    ``generative`` (from :func:`reconaudit.report.generative.generative_section`) adds the
    generative-trust section when the records carry its columns; ``companions`` (from
    :func:`reconaudit.report.companions.companion_sections`) the three ways to diagnose, isoline,
    regression and growth sections.
    """
    a = analysis
    fmt = formatted_tables(a)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    tmpl = env.get_template("report.html.j2")
    figs = [_figure_dict(f, i) for i, f in enumerate(figures, start=1)]
    depth_secs = _depth_sections(depth or [], len(figs) + 1)
    comp_secs = _depth_sections(companions or [], len(figs) + 1 + sum(len(d["figures"]) for d in depth_secs))
    task_by, fair_by = [], []
    for cohort in a.cohorts:
        t = fmt["task"][fmt["task"]["cohort"] == cohort] if not fmt["task"].empty else fmt["task"]
        fairness = fmt["fairness"][fmt["fairness"]["cohort"] == cohort] if not fmt["fairness"].empty else fmt["fairness"]
        task_by.append({"cohort": cohort, "table": _table(_drop_columns(t, "cohort"))})
        fair_by.append({"cohort": cohort, "table": _table(_drop_columns(fairness, "cohort"))})
    fs = fmt["fairness"]
    sig = fs[fs["_significant"]] if not fs.empty else fs
    cohorts = []
    for name, info in a.cohorts.items():
        cm = (meta.get("cohorts") or {}).get(name, {})
        cohorts.append({
            "name": name, "modality": info.get("modality") or cm.get("modality", ""), "task": info["task"],
            "labels": ", ".join(info["labels"]) or "none", "attributes": ", ".join(info["group_attributes"]) or "none",
            "level_name": info["level_name"] or "level", "levels": ", ".join(f"{v:g}" for v in info["levels"]),
            "card_html": Markup(render_markdown(str(cm.get("data_card") or "(no data card)"))),
        })
    versions = pd.DataFrame(sorted((meta.get("versions") or {}).items()), columns=["package", "version"])
    if versions.empty:
        versions = pd.DataFrame([("reconaudit", __version__)], columns=["package", "version"])
    sections = [
        {"id": "summary", "title": "Summary", "children": []},
        {"id": "figures", "title": "Figures", "children": [{"id": f["id"], "title": f["title"]} for f in figs]},
        {"id": "task", "title": "Task performance",
         "children": [{"id": f"task-{i}", "title": c["cohort"]} for i, c in enumerate(task_by, 1)]},
        {"id": "fairness", "title": "Fairness", "children": [{"id": "fairness-sig", "title": "Significant bias changes"}]
         + [{"id": f"fairness-{i}", "title": c["cohort"]} for i, c in enumerate(fair_by, 1)]
         + ([{"id": "seeds", "title": "Training seeds"}] if not fmt["seeds"].empty else [])},
        {"id": "definitions", "title": "Definitions and statistics", "children": []},
        *([{"id": "depth", "title": "Fairness audit in depth",
            "children": [{"id": d["id"], "title": d["title"]} for d in depth_secs]}] if depth_secs else []),
        *([{"id": "generative", "title": "Can the reconstruction be trusted?",
             "children": [{"id": "generative-region", "title": "Region-aware image quality"},
                          {"id": "generative-hallucination", "title": "Hallucination and uncertainty"}]}]
          if generative is not None and not generative.empty else []),
        *([{"id": "companions", "title": "Diagnosis without an image, infiltration, growth",
            "children": [{"id": d["id"], "title": d["title"]} for d in comp_secs]}] if comp_secs else []),
        {"id": "data", "title": "Cohorts and data cards", "children": []},
        {"id": "config", "title": "Configuration", "children": []},
        {"id": "versions", "title": "Software versions", "children": []},
        {"id": "failures", "title": "Failures" + (f" ({len(meta.get('failures') or [])})"
                                                    if meta.get("failures") else ""), "children": []},
    ]
    html = tmpl.render(
        name=str(meta.get("name", "audit")), created=str(meta.get("created", "")),
        version=str((meta.get("versions") or {}).get("reconaudit", __version__)),
        n_cells=len(a.cells), n_cohorts=len(a.cohorts), settings=a.settings,
        correction_name="Holm" if a.settings["correction"] == "holm" else "Benjamini-Hochberg",
        sections=sections, headlines=a.headlines.to_dict("records"),
        families=a.families.to_dict("records"), summary=_table(fmt["summary"]), figures=figs,
        task_by_cohort=task_by, fairness_by_cohort=fair_by, fairness_sig=_table(sig),
        seeds=_table(fmt["seeds"]), definitions=_table(a.definitions), depth=depth_secs, cohorts=cohorts,
        companions=comp_secs,
        generative=None if generative is None or generative.empty else {
            "region": [{"cohort": c, "table": _table(t)} for c, t in generative.region.items()],
            "hallucination": [{"cohort": c, "table": _table(t)} for c, t in generative.hallucination.items()]},
        config_yaml=_yaml_text(meta), versions=_table(versions),
        failures=[{"step": str(f.get("step", "")), "error": str(f.get("error", ""))}
                  for f in (meta.get("failures") or [])],
    )
    out_path = Path(out_path)
    out_path.write_text(html, encoding="utf-8")
    return out_path


_FORKED: tuple | None = None  # what a forked figure worker reads (inherited memory, nothing pickled in)


def _figures_part() -> tuple[list, object]:
    """The figures and the generative section: the half of a report a second process can draw."""
    from threadpoolctl import threadpool_limits

    assert _FORKED is not None
    records, meta, analysis, run_dir, out = _FORKED
    records = Records(records.path)  # its own file handle in this process
    with threadpool_limits(limits=1):
        figures = render_figures(records, meta, analysis, run_dir, out / "figures")
        return figures, generative_section(records, meta, out)


def report_jobs(jobs: int | None) -> int:
    """How many processes :func:`build_report` uses: ``jobs`` (1 or 2), else 2 when this machine has
    two cores or more and can fork, else 1."""
    import multiprocessing as mp
    import os

    if jobs is not None:
        if jobs < 1:
            raise ValueError(f"report jobs must be >= 1, got {jobs}")
        return min(int(jobs), 2)
    can_fork = "fork" in mp.get_all_start_methods()
    return 2 if can_fork and (os.cpu_count() or 1) >= 2 else 1


def build_report(run_dir: Path | str, out_dir: Path | str | None = None, *, jobs: int | None = None) -> Path:
    """Analyse a run and write its report.

    Every process computes with one BLAS thread: the report's linear algebra is on small matrices
    (probes, calibration fits, bootstraps), where BLAS threads only contend (on the quickstart the
    shortcut probes took 4.7 s with one thread and 52.6 s with two beside another process; the
    tables are byte-identical).

    Parameters
    ----------
    run_dir : path
        Holds ``records.parquet``, ``run.json`` and optionally ``examples/*.npz``.
    out_dir : path, optional
        Where to write ``tables/``, ``figures/`` and ``report.html``; ``RUN_DIR/report`` by default.
    jobs : int, optional
        Processes to use (see :func:`report_jobs`). With 2, after the main analysis a forked process
        draws the figures and the generative section while this one runs the analyses in depth; the
        files written are the same as with 1.

    Returns
    -------
    pathlib.Path
        The path of ``report.html``.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _build_report(run_dir, out_dir, jobs)


def _build_report(run_dir: Path | str, out_dir: Path | str | None, jobs: int | None) -> Path:
    global _FORKED
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records, meta = open_run(run_dir)
    analysis = analyse(records, meta)
    write_tables(analysis, out / "tables")
    if report_jobs(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        _FORKED = (records, meta, analysis, run_dir, out)
        try:
            with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
                drawn = pool.submit(_figures_part)
                depth = write_depth(analyse_depth(records, meta, analysis), analysis, out / "tables",
                                    out / "figures")
                figures, generative = drawn.result()
        finally:
            _FORKED = None
    else:
        figures = render_figures(records, meta, analysis, run_dir, out / "figures")
        generative = generative_section(records, meta, out)
        depth = write_depth(analyse_depth(records, meta, analysis), analysis, out / "tables", out / "figures")
    companions = companion_sections(records, meta, analysis, out / "tables", out / "figures")
    path = render_html(analysis, meta, figures + generative.figures, out / "report.html", depth=depth,
                       generative=generative, companions=companions)
    logger.info("report written to %s", path)
    return path
