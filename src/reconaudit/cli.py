"""The ``reconaudit`` command line (thin: it calls the engine and the report)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit medical image reconstruction by what it does downstream: task performance and fairness.",
)
console = Console(stderr=True)


def _install_progress() -> Progress:
    from reconaudit import progress as hook

    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )

    @contextlib.contextmanager
    def factory(description: str, total: float | None):
        tid = prog.add_task(description, total=total)

        class _Task:
            def advance(self, n: float = 1.0) -> None:
                prog.advance(tid, n)

            def update(self, *, description: str | None = None, total: float | None = None) -> None:
                kw = {}
                if description is not None:
                    kw["description"] = description
                if total is not None:
                    kw["total"] = total
                prog.update(tid, **kw)

        try:
            yield _Task()
        finally:
            prog.remove_task(tid) if description != "audit steps" else None

    hook.set_progress_factory(factory)
    return prog


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _load(config: str, build_plugins: bool = True):
    from reconaudit.engine.config import ConfigError, load_config, resolve_config_source

    try:
        path = resolve_config_source(config)
        return load_config(path, build_plugins=build_plugins), path.read_text()
    except ConfigError as e:
        console.print(f"[red]{escape(str(e))}[/red]")
        raise typer.Exit(2) from None


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="config YAML file, or a bundled name: quickstart, paper-xray, ...")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory (default runs/<name>)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="parallel worker processes")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="local or ray")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (e.g. auto)")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="skip the HTML report")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Plan and run an audit; finished steps are reused, so a second run resumes where one stopped."""
    _logging(verbose)
    cfg, text = _load(config)
    run_dir = out or Path("runs") / cfg.name
    if (executor or cfg.execution.executor) == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            console.print("[red]--executor ray needs Ray: pip install 'reconaudit\\[ray]'[/red]")
            raise typer.Exit(2) from None
    from reconaudit.engine.run import RunLockedError, run_audit

    prog = _install_progress()
    try:
        with prog:
            result = run_audit(cfg, run_dir, workers=workers, executor=executor, address=address,
                               report=not no_report, config_text=text)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished steps are kept; run the same command again to resume[/yellow]")
        raise typer.Exit(130) from None
    except (ConnectionError, RunLockedError) as e:
        console.print(f"[red]{escape(str(e))}[/red]")
        raise typer.Exit(2) from None
    s = result.summary
    console.print(
        f"[bold]{cfg.name}[/bold]: {len(result.plan.cells)} cells; steps computed {len(s.computed)}, "
        f"reused {len(s.reused)}, failed {len(s.failed)}, skipped {len(s.skipped)}"
    )
    for f in s.failed:
        console.print(f"[red]failed[/red] {f.step}: {f.error} (traceback in {result.run_dir / 'run.log'})")
    console.print(f"records: {result.records_path}")
    console.print(f"summary: {result.run_dir / 'summary.md'}")
    if result.report_path:
        console.print(f"report:  {result.report_path}")
    if s.failed or s.skipped:
        raise typer.Exit(1)


def _check_data(cfg) -> list[dict]:
    """Run the data check; print the error and exit 1 on a data error (no traceback)."""
    from reconaudit.cohorts import CohortError
    from reconaudit.engine.validate import check_data

    try:
        return check_data(cfg)
    except CohortError as e:
        console.print(f"[red]data error: {escape(str(e))}[/red]")
        raise typer.Exit(1) from None


@app.command()
def check(
    config: Annotated[str, typer.Argument(help="config YAML file or bundled name")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Check the config and every loader cohort's tables and file headers, without decoding images.

    Fails (exit 1) with the message `run` would give for a data error; exit 2 for a config error.
    """
    _logging(verbose)
    cfg, _ = _load(config)
    rows = _check_data(cfg)
    out = Console()
    out.print(f"[bold]{escape(cfg.name)}[/bold]: data check passed")
    for r in rows:
        sp = r["splits"]
        out.print(
            f"- {escape(r['cohort'])} ({r['key']}): {r['studies']} studies, {r['patients']} patients "
            f"(train/val/test {sp['train']}/{sp['val']}/{sp['test']}); tasks: {', '.join(r['tasks'])}; "
            f"groups: {escape(', '.join(r['groups'])) or '-'}; unknown: "
            f"{escape(', '.join(f'{k}: {v}' for k, v in r['unknown'].items())) or '-'}; impossible ages: "
            f"{r['impossible_ages']}; dropped: {escape(', '.join(f'{k}: {v}' for k, v in r['dropped'].items())) or '-'}",
            soft_wrap=True,
        )
    if not rows:
        console.print("no loader cohorts: synthetic cohorts are generated at run time")


@app.command()
def plan(
    config: Annotated[str, typer.Argument(help="config YAML file or bundled name")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory to check for finished steps")] = None,
    check_data: Annotated[bool, typer.Option("--check/--no-check", help="check the data first")] = True,
) -> None:
    """Print the grid of cells, which are already done and why the others must be computed.

    Nothing is run or written, and no user code is called (plug-in factories are not built).
    Loader cohorts are checked first as by `reconaudit check` (tables and headers, no image decoding).
    """
    cfg, _ = _load(config, build_plugins=False)
    if check_data:
        _check_data(cfg)
    from reconaudit.engine.run import plan_status, stale_reasons

    run_dir = out or Path("runs") / cfg.name
    p, done = plan_status(cfg, run_dir)
    why = stale_reasons(p, done)
    table = Table(title=f"{cfg.name}: {len(p.cells)} cells, {len(p.steps)} steps ({sum(done.values())} done)")
    for col in ("cell", "cohort", "degradation", "level", "reconstructor", "mitigation", "seed", "status"):
        table.add_column(col, no_wrap=col in ("cell", "cohort", "status"))
    for c in p.cells:
        need = p.needed_for([c.final_step])
        n_done = sum(done[s] for s in need)
        status = "done" if done[c.final_step] else f"{n_done}/{len(need)} steps"
        if any(why.get(s, "").startswith("input changed") for s in need):
            status += ", inputs changed"
        mit = c.mitigation if c.mitigation == "none" else f"{c.mitigation} λ={c.mitigation_strength:g}"
        table.add_row(c.cell_id, c.cohort, c.degradation, f"{c.level:g}", c.reconstructor, mit, str(c.seed), status)
    Console().print(table)
    if any(done.values()):
        from reconaudit.engine.run import store_for, thread_counts

        threads = thread_counts(p, store_for(cfg, run_dir))
        if len(threads) > 1:
            Console().print("note: the finished steps were computed with different torch thread counts ("
                            + ", ".join(f"{k} threads: {v} steps" for k, v in threads.items())
                            + "); CPU results may differ in the last digits", soft_wrap=True)
    changed = {s: r for s, r in why.items() if r.startswith("input changed")}
    for sid, reason in changed.items():
        n_after = sum(1 for s in p.steps if s != sid and sid in p.needed_for([s]) and not done[s])
        Console().print(f"stale: {escape(sid)}: {escape(reason)}; {n_after} downstream steps follow", soft_wrap=True)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory holding records.parquet")],
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="processes (1 or 2; default 2 on 2+ cores)")] = None,
) -> None:
    """Rebuild tables, figures and the HTML report from the stored records alone."""
    if not (run_dir / "records.parquet").exists():
        console.print(f"[red]{run_dir} has no records.parquet: run an audit there first[/red]")
        raise typer.Exit(2)
    if jobs is not None and jobs < 1:
        console.print("[red]--jobs must be >= 1[/red]")
        raise typer.Exit(2)
    from reconaudit.engine.run import RunLockedError, run_lock, write_report

    try:
        with run_lock(run_dir):
            path = write_report(run_dir, force=True, jobs=jobs)
    except RunLockedError as e:
        console.print(f"[red]{escape(str(e))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"report: {path}")


@app.command()
def power(
    run_dir: Annotated[Path, typer.Argument(help="a run directory holding records.parquet")],
    effect: Annotated[float, typer.Option("--effect", help="bias change to detect (e.g. 0.05)")] = 0.05,
    power_: Annotated[float, typer.Option("--power", help="power of the test")] = 0.8,
    alpha: Annotated[float | None, typer.Option("--alpha", help="test level (default: the run's analysis.alpha)")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="also write the table to this CSV file")] = None,
) -> None:
    """Test patients needed to detect a bias change of EFFECT, from the variance observed in a run."""
    if not (run_dir / "records.parquet").exists():
        console.print(f"[red]{run_dir} has no records.parquet: run an audit there first[/red]")
        raise typer.Exit(2)
    if effect <= 0 or not 0 < power_ < 1 or (alpha is not None and not 0 < alpha < 1):
        console.print("[red]--effect must be > 0, --power and --alpha in (0, 1)[/red]")
        raise typer.Exit(2)
    from reconaudit.report import analyse
    from reconaudit.report.depth import power_table
    from reconaudit.report.html import open_run

    records, meta = open_run(run_dir)
    df = power_table(analyse(records, meta), effect, power=power_, alpha=alpha)
    table = Table(title=f"patients needed to detect a bias change of {effect:g} at {100 * power_:.0f}% power")
    cols = ["cohort", "level", "reconstructor", "attribute", "label", "metric", "observed_change", "standard_error",
            "n_patients", "power_now", "required_patients"]
    for c in cols:
        table.add_column(c.replace("_", " "), overflow="fold")
    for r in df.to_dict("records"):
        table.add_row(*[("n/a" if isinstance(r[c], float) and r[c] != r[c] else
                         f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in cols])
    console.print(table)
    if csv is not None:
        df.to_csv(csv, index=False)
        console.print(f"written: {escape(str(csv))}")


@app.command()
def cohorts() -> None:
    """List the cohorts reconaudit knows, with their tasks and group attributes."""
    from reconaudit.cohorts import COHORTS

    table = Table(title="cohorts")
    for col in ("name", "kind", "modality", "tasks", "group attributes", "description"):
        table.add_column(col, no_wrap=col in ("name", "kind", "modality"))
    for e in COHORTS.values():
        table.add_row(e.name, e.kind, e.modality, ", ".join(e.tasks), e.groups, e.description)
    Console().print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
