"""Plan and run an audit, then write the records table, the run metadata and the report."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from reconaudit.engine.config import AuditConfig, config_to_dict
from reconaudit.engine.executors import ContextSpec, RunSummary, make_executor
from reconaudit.engine.histories import training_histories
from reconaudit.engine.inputs import InputDigests
from reconaudit.engine.plan import Plan, Step, build_plan
from reconaudit.engine.records import (
    Records,
    check_examples,
    collect_records,
    write_plain_summary,
    write_run_meta,
)
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


class RunLockedError(RuntimeError):
    """Another process holds the run directory; the message says who (pid, host, start time)."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive OS lock (``fcntl.flock`` on ``RUN_DIR/.lock``) for the whole run.

    A second run on the same directory is refused at once with :class:`RunLockedError` naming the
    holder, which the lock file records (pid, host, start time, command line).  The lock dies with
    its process, so a killed run never leaves the directory locked.
    """
    import fcntl
    import json
    import os
    import sys

    path = Path(run_dir) / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                who = json.loads(fh.read() or "{}")
            except ValueError:
                who = {}
            raise RunLockedError(
                f"run directory {run_dir} is in use by another run (pid {who.get('pid', '?')} on host "
                f"{who.get('host', '?')}, started {who.get('started', '?')}: {who.get('command', '?')}); wait for "
                "it to finish, stop it, or give this run another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": platform.node(), "command": " ".join(sys.argv),
                             "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}))
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def clean_stale_temporaries(run_dir: Path) -> int:
    """Remove temporary files of atomic writes a killed run left in ``run_dir`` (``.NAME.*.tmp``,
    ``examples/*.npz.tmp``, ``.report-*``); call only while holding :func:`run_lock`."""
    import shutil

    n = 0
    for pattern in (".*.tmp", "cohorts/*/.*.tmp", "examples/*.tmp", ".report-*"):
        for f in Path(run_dir).glob(pattern):
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
            n += 1
    return n


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


def input_digests(cfg: AuditConfig, run_dir: Path) -> InputDigests:
    """The external-file digests of a run, cached in a local store (else in the run directory)."""
    run_dir = Path(run_dir)
    store_loc = cfg.execution.store or (run_dir / "store")
    remote = "://" in str(store_loc) and not str(store_loc).startswith("file://")
    local = Path(str(store_loc).removeprefix("file://"))
    cache = run_dir / ".input-digests.json" if remote else local / ".inputs" / "digests.json"
    return InputDigests(cache, exclude=[run_dir] if remote else [run_dir, local])


def stale_reasons(plan: Plan, done: dict[str, bool]) -> dict[str, str]:
    """Why each step that is not done has to be computed.

    ``input changed: FILE (changed|added|removed)`` for a step whose external inputs differ from
    the digests last seen (the file is named), ``after STEP`` for a step waiting on another step
    that is not done, ``not computed yet`` otherwise.
    """
    out: dict[str, str] = {}
    for step in plan.ordered():
        if done.get(step.id):
            continue
        changes = plan.digests.changes_under(getattr(step.spec, "inputs", {})) if plan.digests is not None else []
        if changes:
            shown = ", ".join(f"{f} ({what})" for f, what in changes[:3])
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            out[step.id] = f"input changed: {shown}{more}"
            continue
        dep = next((d for d in step.deps if not done.get(d)), None)
        out[step.id] = f"after {dep}" if dep else "not computed yet"
    return out


def plan_status(cfg: AuditConfig, run_dir: Path) -> tuple[Plan, dict[str, bool]]:
    """The plan and, for every step, whether its artifact already exists (nothing is written)."""
    run_dir = Path(run_dir)
    plan = build_plan(cfg, input_digests(cfg, run_dir))
    store_loc = cfg.execution.store or (run_dir / "store")
    if "://" not in str(store_loc) and not Path(store_loc).exists():
        return plan, {sid: False for sid in plan.steps}
    store = store_for(cfg, run_dir)
    return plan, {sid: store.exists(s.kind, s.key) for sid, s in plan.steps.items()}


def steps_to_compute(plan: Plan, store: ArtifactStore) -> list[Step]:
    """The steps whose artifact is missing or fails verification, in dependency order.

    Every committed artifact of the plan is verified against the checksums of its commit marker
    (a full hash, once per process); a damaged one is quarantined by the store and recomputed.
    """
    return [s for s in plan.ordered() if not store.verified(s.kind, s.key)]


def step_timing(summary, plan: Plan, run_dir: Path) -> dict:
    """Wall and CPU seconds of every step of the plan, and their totals by step kind.

    Steps this invocation computed take their figures from ``summary``; a reused step keeps the
    figures an earlier invocation wrote into ``run.json`` (so a resumed run still reports what each
    step cost). CPU seconds are the step process's time (all its threads): unlike wall time they
    hardly move when other work shares the machine, so they are the figure to compare between runs
    on a busy host.
    """
    import json

    try:
        old = json.loads((Path(run_dir) / "run.json").read_text()).get("timing", {}).get("steps", {})
    except (OSError, ValueError, AttributeError):
        old = {}
    ids = set(plan.steps)
    steps = {sid: t for sid, t in (old if isinstance(old, dict) else {}).items() if sid in ids and isinstance(t, dict)}
    for sid in summary.computed:
        if sid in summary.seconds:
            steps[sid] = {"wall_s": round(summary.seconds[sid], 3),
                          "cpu_s": round(summary.cpu_seconds.get(sid, 0.0), 3)}
    kinds: dict[str, dict[str, float]] = {}
    for sid, t in sorted(steps.items()):
        k = kinds.setdefault(sid.split("/")[0], {"steps": 0, "wall_s": 0.0, "cpu_s": 0.0})
        k["steps"] += 1
        k["wall_s"] = round(k["wall_s"] + float(t.get("wall_s", 0.0)), 3)
        k["cpu_s"] = round(k["cpu_s"] + float(t.get("cpu_s", 0.0)), 3)
    return {"steps": dict(sorted(steps.items())), "by_kind": kinds}


def thread_counts(plan: Plan, store: ArtifactStore) -> dict[str, int]:
    """How many of the plan's committed artifacts were computed with each torch thread count.

    CPU reductions are ordered by threads, so results can differ in the last digits (about 1e-7)
    between thread counts; more than one count means the store mixes them.
    """
    out: dict[str, int] = {}
    for s in plan.steps.values():
        if store.exists(s.kind, s.key):
            n = str((store.marker(s.kind, s.key).get("env") or {}).get("torch_threads", "unknown"))
            out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


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
        cc = next(c for c in cfg.cohorts if c.name == step.spec.name and c.params == step.spec.params)
        tasks = sorted({s.spec.task for s in plan.steps.values()
                        if s.kind == "task_model" and s.spec.cohort == step.key})
        level_names = sorted({getattr(DEGRADATIONS.get(dc.name), "level_name", "level") for dc in cc.degradations})
        card = (d / "data_card.md").read_text()
        no_task = ""
        if not tasks:
            no_task = ("the config asks for none (`tasks: none`)" if cc.recon_only else
                       "the cohort offers no diagnostic task with these parameters (no labels and no masks, "
                       "e.g. fastMRI without `labels_csv`)")
            card = (card.rstrip() + "\n\n## Diagnostic tasks\n\nNo task metrics: " + no_task + ". This is a "
                    "reconstruction-quality audit: PSNR, SSIM and NMSE per study and per group.\n")
        out[step.spec.name] = {
            "modality": info["modality"],
            "tasks": tasks,
            "labels": info["labels"] if "classification" in tasks else [],
            "group_attributes": info["group_attributes"],
            "level_name": level_names[0] if len(level_names) == 1 else "level",
            "data_card": card,
            "no_task_reason": no_task,
            "unknown_groups": info.get("meta", {}).get("groups", {}).get("unknown_groups", "keep"),
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
    rec = Records.of(records)
    if rec.empty:
        return out
    firsts = rec.first_rows(["cell_id", "cohort", "seed"]).sort_index()  # file order
    firsts = firsts[firsts["cohort"] == cohort]
    if firsts.empty:
        return out
    per_seed = []
    for _, g in firsts.groupby("seed"):
        cid = g["cell_id"].iloc[0]
        names = [c for c in rec.with_prefix("target:") if f"clean_score:{c.split(':', 1)[1]}" in rec]
        first = rec.cell(cid, [*names, *[f"clean_score:{c.split(':', 1)[1]}" for c in names],
                               *(["clean_dice"] if "clean_dice" in rec else [])])
        vals = {}
        for col in names:
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
        firsts = records.first_rows(["cohort"])  # cell_ids order
        cid = next(c for c, co in zip(records.cell_ids, firsts["cohort"]) if co == name)
        n_test = len(records.cell(cid, ["cohort"]))
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


def _append_quality_by_group(cohorts: dict, records) -> None:
    """Reconstruction-quality audits (no task): mean PSNR and SSIM of each group, in the cohort's data card.

    Per reconstructor, mitigation and level, over the test studies of every seed; a group's mean is
    :func:`reconaudit.metrics.by_group` of the study values.  With ``unknown_groups: exclude`` the
    studies of unknown group are left out of their attribute's table.
    """
    from reconaudit.cohorts._io import md_escape
    from reconaudit.metrics import by_group

    for name, info in cohorts.items():
        if info["tasks"] or not info["group_attributes"] or records.empty:
            continue
        cols = ["reconstructor", "mitigation", "level", "psnr", "ssim",
                *[f"group:{a}" for a in info["group_attributes"]]]
        rows = records.select(cols, where={"cohort": name, "arm": "reconstruct"})
        if rows.empty:
            continue
        lines = ["", "## Image quality by group", "",
                 "Mean over the test studies of each group (every seed pooled):", "",
                 "| reconstructor | mitigation | level | attribute | group | studies | PSNR (dB) | SSIM |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (rec, mit, level), cell in rows.groupby(["reconstructor", "mitigation", "level"], sort=True):
            for a in info["group_attributes"]:
                g = cell[f"group:{a}"].astype(str)
                keep = (g != "unknown").to_numpy() if info.get("unknown_groups") == "exclude" else g.notna().to_numpy()
                if not keep.any():
                    continue
                psnr = by_group(cell["psnr"].to_numpy(float)[keep], sensitive_features=g.to_numpy()[keep])
                ssim = by_group(cell["ssim"].to_numpy(float)[keep], sensitive_features=g.to_numpy()[keep])
                sizes = g[keep].value_counts()
                for grp in psnr:
                    lines.append(f"| {md_escape(rec)} | {mit} | {level:g} | {md_escape(a)} | {md_escape(grp)} | "
                                 f"{int(sizes[grp])} | "
                                 f"{psnr[grp]:.2f} | {ssim[grp]:.3f} |")
        info["data_card"] = info["data_card"].rstrip() + "\n" + "\n".join(lines) + "\n"


def report_fingerprint(run_dir: Path, meta: dict) -> str:
    """sha256 of the records file, the config, the analysis settings, the version and the data cards."""
    import hashlib
    import json

    h = hashlib.sha256((Path(run_dir) / "records.parquet").read_bytes())
    h.update(json.dumps([meta.get("config"), meta.get("analysis"), (meta.get("versions") or {}).get("reconaudit"),
                         {k: v.get("data_card") for k, v in (meta.get("cohorts") or {}).items()}],
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def _report_current(report_dir: Path, fingerprint: str) -> bool:
    import json

    from reconaudit.engine.store import verify_manifest

    try:
        stamp = json.loads((report_dir / ".fingerprint").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("fingerprint") != fingerprint or "report.html" not in stamp.get(
            "files", {}):
        return False
    problem = verify_manifest(report_dir, stamp["files"])
    if problem is not None:
        log.warning("the report in %s is damaged (%s): it is built again", report_dir, problem)
    return problem is None


def _store_of_run(run_dir: Path, meta: dict) -> ArtifactStore | None:
    """The store a run wrote (``execution.store`` of its config, else ``RUN_DIR/store``), if present."""
    loc = ((meta.get("config") or {}).get("execution") or {}).get("store") or (Path(run_dir) / "store")
    if "://" not in str(loc) and not Path(loc).is_dir():
        return None
    try:
        return open_store(loc)
    except Exception:  # noqa: BLE001 - an unreachable store only means no copy to restore from
        return None


def write_report(run_dir: Path, meta: dict | None = None, *, force: bool = False, jobs: int | None = None) -> Path:
    """Build the report of a run atomically; skip it when one exists for exactly these inputs.

    The report is built in a temporary directory ``RUN_DIR/.report-*``; its ``.fingerprint`` (the
    :func:`report_fingerprint` and the checksum of every report file) is written last, then the
    directory is renamed to ``RUN_DIR/report``.  A kill leaves the previous report whole (or none),
    never a truncated one, and a report whose files no longer match their checksums is rebuilt.
    ``jobs``: processes for :func:`reconaudit.report.build_report` (default: 2 on a machine with two
    cores or more).
    """
    import json
    import os
    import shutil
    import uuid

    from reconaudit.engine.store import manifest_of
    from reconaudit.report import build_report

    run_dir = Path(run_dir)
    if meta is None:
        meta = json.loads((run_dir / "run.json").read_text())
    fingerprint = report_fingerprint(run_dir, meta)
    final = run_dir / "report"
    if not force and _report_current(final, fingerprint):
        log.info("report is up to date with the records: %s", final / "report.html")
        return final / "report.html"
    check_examples(run_dir, meta, _store_of_run(run_dir, meta))
    tmp = run_dir / f".report-{uuid.uuid4().hex[:8]}"
    try:
        build_report(run_dir, out_dir=tmp, jobs=jobs)
        (tmp / ".fingerprint").write_text(json.dumps({"fingerprint": fingerprint, "files": manifest_of(tmp)}))
        old = run_dir / f".report-old-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "report.html"


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
    The run holds :func:`run_lock` on ``run_dir`` throughout: a concurrent second run is refused
    with :class:`RunLockedError`.
    """

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _run_locked(cfg, run_dir, workers=workers, executor=executor, address=address, report=report,
                           config_text=config_text)


def _run_locked(cfg: AuditConfig, run_dir: Path, *, workers: int | None, executor: str | None,
                address: str | None, report: bool, config_text: str | None) -> AuditResult:
    from reconaudit.devices import resolve_device

    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        store = store_for(cfg, run_dir)
        removed = store.clean_tmp() + clean_stale_temporaries(run_dir)
        if removed:
            log.info("removed %d temporary files and directories left by an interrupted run", removed)
        plan = build_plan(cfg, input_digests(cfg, run_dir))
        for f, what in sorted(plan.digests.changes.items()):
            log.info("input %s: %s; the steps reading it are recomputed", what, f)
        plan.digests.save()
        todo = steps_to_compute(plan, store)
        log.info("plan: %d cells, %d steps, %d to compute", len(plan.cells), len(plan.steps), len(todo))
        on_ray = (executor or cfg.execution.executor) == "ray"
        # on Ray the device resolves on each worker (the driver may have no GPU at all)
        device = f"{cfg.device} (resolved on each Ray worker)" if on_ray else str(resolve_device(cfg.device))
        ctx_device = cfg.device if on_ray else device
        ex = make_executor(executor or cfg.execution.executor, workers or cfg.execution.workers,
                           address or cfg.execution.address,
                           resources={k: v.model_dump() for k, v in cfg.execution.resources.items()})
        summary = ex.run(todo, ContextSpec(store.url, device=ctx_device, mixed_precision=cfg.execution.mixed_precision,
                                             threads=cfg.execution.threads, shard_studies=cfg.execution.shard_studies,
                                             shard_tasks=cfg.execution.shard_tasks,
                                             batch_studies=cfg.execution.batch_studies),
                         cfg.execution.retries)
        summary.reused.extend(s.id for s in plan.ordered() if s not in todo)
        for f in summary.failed:
            log.error("step %s failed after %d attempts: %s\n%s", f.step, f.attempts, f.error, f.traceback)
        records, cells = collect_records(plan, store, run_dir)  # written to run_dir/records.parquet
        threads = thread_counts(plan, store)
        if len(threads) > 1:
            log.warning("the artifacts of this run were computed with different torch thread counts (%s: count -> "
                        "steps); CPU results can differ in the last digits between thread counts. Resume with the "
                        "same --workers on the same machine, or start a fresh store, for bit-identical numbers",
                        ", ".join(f"{k} -> {v}" for k, v in threads.items()))
        meta = {
            "name": cfg.name,
            "config": config_to_dict(cfg),
            "config_yaml": config_text or yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
            "versions": software_versions(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device": device,
            "torch_threads": threads,
            "cohorts": cohort_meta(plan, store, cfg),
            "cells": cells,
            "training": training_histories(plan, store),
            "timing": step_timing(summary, plan, run_dir),
            "analysis": cfg.analysis.model_dump(),
            "failures": [{"step": f.step, "error": f.error} for f in summary.failed]
            + [{"step": s, "error": "skipped: a step it depends on failed"} for s in summary.skipped],
        }
        _append_clean_performance(meta["cohorts"], records)
        _append_quality_by_group(meta["cohorts"], records)
        for name, info in meta["cohorts"].items():
            from reconaudit.engine.store import atomic_write_text

            atomic_write_text(run_dir / "cohorts" / name / "data_card.md", info["data_card"])
        records_path = records.path
        write_run_meta(meta, run_dir)
        if not records.empty:
            write_plain_summary(records, meta, run_dir)
        report_path = None
        if report and not records.empty:
            report_path = write_report(run_dir, meta)
        log.info("audit %s: %d computed, %d reused, %d failed, %d skipped", cfg.name, len(summary.computed),
                 len(summary.reused), len(summary.failed), len(summary.skipped))
        return AuditResult(run_dir, records_path, report_path, summary, plan)
    finally:
        log.removeHandler(handler)
        handler.close()
