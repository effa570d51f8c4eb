"""Plan and run an audit, then write the records table, the run metadata and the report."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from reconaudit.engine.config import AuditConfig, config_to_dict
from reconaudit.engine.executors import ContextSpec, RunSummary, make_executor
from reconaudit.engine.histories import training_histories
from reconaudit.engine.plan import Plan, build_plan
from reconaudit.engine.records import collect_records, write_plain_summary, write_records, write_run_meta
from reconaudit.engine.store import ArtifactStore, open_store

log = logging.getLogger("reconaudit")


@dataclass
class AuditResult:
    """Where an audit wrote its outputs, and what its executor did."""

    run_dir: Path
    records_path: Path
    report_path: Path | None
    summary: RunSummary
    plan: Plan


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour the numbers depend on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("reconaudit", "torch", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "monai",
                "pyarrow", "nilearn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def store_for(cfg: AuditConfig, run_dir: Path) -> ArtifactStore:
    """The artifact store of a run: ``execution.store`` or ``RUN_DIR/store``."""
    return open_store(cfg.execution.store or (run_dir / "store"))


def plan_status(cfg: AuditConfig, run_dir: Path) -> tuple[Plan, dict[str, bool]]:
    """The plan and, for every step, whether its artifact already exists."""
    plan = build_plan(cfg)
    run_dir = Path(run_dir)
    store_loc = cfg.execution.store or (run_dir / "store")
    if "://" not in str(store_loc) and not Path(store_loc).exists():
        return plan, {sid: False for sid in plan.steps}
    store = store_for(cfg, run_dir)
    return plan, {sid: store.exists(s.kind, s.key) for sid, s in plan.steps.items()}


def cohort_meta(plan: Plan, store: ArtifactStore, cfg: AuditConfig) -> dict:
    """Per cohort: modality, tasks, labels, group attributes, level unit, data card."""
    import json

    from reconaudit.physics import DEGRADATIONS

    out: dict[str, dict] = {}
    for step in plan.steps.values():
        if step.kind != "cohort" or not store.exists("cohort", step.key):
            continue
        d = store.path("cohort", step.key)
        info = json.loads((d / "cohort.json").read_text())
        cc = next(c for c in cfg.cohorts if c.name == step.spec["name"] and c.params == step.spec["params"])
        tasks = sorted({s.spec["task"] for s in plan.steps.values()
                        if s.kind == "task_model" and s.spec["cohort"] == step.key})
        level_names = sorted({getattr(DEGRADATIONS.get(dc.name), "level_name", "level") for dc in cc.degradations})
        out[step.spec["name"]] = {
            "modality": info["modality"],
            "tasks": tasks,
            "labels": info["labels"] if "classification" in tasks else [],
            "group_attributes": info["group_attributes"],
            "level_name": level_names[0] if len(level_names) == 1 else "level",
            "data_card": (d / "data_card.md").read_text(),
        }
    return out


def clean_performance(records, cohort: str) -> dict[str, float]:
    """Clean-image test performance of a cohort's diagnostic models, from the records.

    Per label the AUROC of ``clean_score`` against ``target`` (seed-averaged), and the mean clean
    Dice; the clean predictions are identical in every cell of a (cohort, seed).
    """
    import numpy as np

    from reconaudit.metrics import auroc

    out: dict[str, float] = {}
    rows = records[records["cohort"] == cohort]
    if rows.empty:
        return out
    per_seed = []
    for _, g in rows.groupby("seed"):
        first = g[g["cell_id"] == g["cell_id"].iloc[0]]
        vals = {}
        for col in first.columns:
            if col.startswith("target:") and f"clean_score:{col.split(':', 1)[1]}" in first:
                lb = col.split(":", 1)[1]
                y = first[col].to_numpy()
                ok = ~np.isnan(y)
                if ok.sum() and len(np.unique(y[ok])) == 2:
                    vals[f"AUROC {lb}"] = float(auroc(y[ok], first[f"clean_score:{lb}"].to_numpy()[ok]))
        if "clean_dice" in first and first["clean_dice"].notna().any():
            vals["Dice"] = float(first["clean_dice"].mean())
        per_seed.append(vals)
    for k in per_seed[0]:
        out[k] = float(np.mean([v[k] for v in per_seed if k in v]))
    return out


def _append_clean_performance(cohorts: dict, records) -> None:
    for name, info in cohorts.items():
        perf = clean_performance(records, name)
        if not perf:
            continue
        n_test = int(records.loc[records["cohort"] == name].groupby("cell_id").size().iloc[0])
        lines = [
            "",
            "## Diagnostic models on clean test images",
            "",
            f"Trained on the clean train split, thresholds on clean validation data, measured on the {n_test} "
            "clean test studies of this run (averaged over training seeds):",
            "",
            "| measure | value |",
            "| --- | --- |",
            *[f"| {k} | {v:.3f} |" for k, v in perf.items()],
            "",
        ]
        info["data_card"] = info["data_card"].rstrip() + "\n" + "\n".join(lines)
        info["clean_performance"] = perf


def _report_if_changed(run_dir: Path, meta: dict) -> Path:
    """Build the report unless one exists for exactly these records, config and analysis settings."""
    import hashlib
    import json

    from reconaudit.engine.store import atomic_write_text
    from reconaudit.report import build_report

    h = hashlib.sha256((run_dir / "records.parquet").read_bytes())
    h.update(json.dumps([meta["config"], meta["analysis"], meta["versions"].get("reconaudit"),
                         {k: v.get("data_card") for k, v in meta["cohorts"].items()}],
                        sort_keys=True, default=str).encode())
    fingerprint = h.hexdigest()
    stamp = run_dir / "report" / ".fingerprint"
    html = run_dir / "report" / "report.html"
    if html.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        log.info("report is up to date with the records: %s", html)
        return html
    path = build_report(run_dir)
    atomic_write_text(stamp, fingerprint)
    return path


def run_audit(
    cfg: AuditConfig,
    run_dir: str | Path,
    *,
    workers: int | None = None,
    executor: str | None = None,
    address: str | None = None,
    report: bool = True,
    config_text: str | None = None,
) -> AuditResult:
    """Plan ``cfg``, compute every step whose artifact is missing, and write the outputs.

    Outputs in ``run_dir``: ``records.parquet``, ``run.json``, ``summary.csv``/``summary.md``,
    ``examples/``, ``run.log`` and (with ``report=True``) the report (``report.html``, ``tables/``,
    ``figures/``).  Finished steps are reused, so running again after an interruption resumes.
    """
    from reconaudit.devices import resolve_device

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        store = store_for(cfg, run_dir)
        removed = store.clean_tmp()
        if removed:
            log.info("removed %d temporary directories left by an interrupted run", removed)
        plan = build_plan(cfg)
        todo = [s for s in plan.ordered() if not store.exists(s.kind, s.key)]
        log.info("plan: %d cells, %d steps, %d to compute", len(plan.cells), len(plan.steps), len(todo))
        on_ray = (executor or cfg.execution.executor) == "ray"
        # on Ray the device resolves on each worker (the driver may have no GPU at all)
        device = f"{cfg.device} (resolved on each Ray worker)" if on_ray else str(resolve_device(cfg.device))
        ctx_device = cfg.device if on_ray else device
        ex = make_executor(executor or cfg.execution.executor, workers or cfg.execution.workers,
                           address or cfg.execution.address)
        if hasattr(ex, "resources"):
            ex.resources = {k: v.model_dump() for k, v in cfg.execution.resources.items()}
        summary = ex.run(todo, ContextSpec(store.url, ctx_device, cfg.execution.mixed_precision),
                         cfg.execution.retries)
        summary.reused.extend(s.id for s in plan.ordered() if s not in todo)
        for f in summary.failed:
            log.error("step %s failed after %d attempts: %s\n%s", f.step, f.attempts, f.error, f.traceback)
        records, cells = collect_records(plan, store, run_dir)
        meta = {
            "name": cfg.name,
            "config": config_to_dict(cfg),
            "config_yaml": config_text or yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
            "versions": software_versions(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device": device,
            "cohorts": cohort_meta(plan, store, cfg),
            "cells": cells,
            "training": training_histories(plan, store),
            "analysis": cfg.analysis.model_dump(),
            "failures": [{"step": f.step, "error": f.error} for f in summary.failed]
            + [{"step": s, "error": "skipped: a step it depends on failed"} for s in summary.skipped],
        }
        _append_clean_performance(meta["cohorts"], records)
        for name, info in meta["cohorts"].items():
            from reconaudit.engine.store import atomic_write_text

            atomic_write_text(run_dir / "cohorts" / name / "data_card.md", info["data_card"])
        records_path = write_records(records, run_dir)
        write_run_meta(meta, run_dir)
        if len(records):
            write_plain_summary(records, meta, run_dir)
        report_path = None
        if report and len(records):
            report_path = _report_if_changed(run_dir, meta)
        log.info("audit %s: %d computed, %d reused, %d failed, %d skipped", cfg.name, len(summary.computed),
                 len(summary.reused), len(summary.failed), len(summary.skipped))
        return AuditResult(run_dir, records_path, report_path, summary, plan)
    finally:
        log.removeHandler(handler)
        handler.close()
