"""Second-level config validation: every named component and its parameters, before any work."""

from __future__ import annotations

from reconaudit.engine.config import AuditConfig, ConfigError


def _check(errors: list[str], path: str, fn, *args, **kwargs) -> object:
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        errors.append(f"  {path}: {e}")
        return None


def validate_reconstructor_params(name: str, params: dict) -> None:
    """Check a reconstructor's parameters (by its pydantic ``Params`` model, or by building it)."""
    from reconaudit.recon import RECONSTRUCTORS, make_reconstructor

    cls = RECONSTRUCTORS[name]
    if hasattr(cls, "Params") and name not in ("plugin", "folder"):
        from reconaudit.recon.training import validate_params

        validate_params(cls, params)
    else:
        make_reconstructor(name, device="cpu", **params)


def validate_task_params(kind: str, arch: str, params: dict) -> None:
    """Check a diagnostic model's kind, arch and parameters by building it (cheap, untrained)."""
    from reconaudit.tasks import make_task_model

    n = None if kind == "classification" else 1
    make_task_model(kind, arch=arch, device="cpu", in_channels=1, n_outputs=n or 2, **params)


def validate_components(cfg: AuditConfig, where: str = "<config>") -> None:
    """Check cohort, degradation, reconstructor, task and mitigation names and parameters.

    Raises :class:`ConfigError` listing every problem with its key path and the allowed values.
    """
    from reconaudit.cohorts import COHORTS, validate_cohort_params
    from reconaudit.physics import DEGRADATIONS, make_degradation
    from reconaudit.recon import RECONSTRUCTORS

    errors: list[str] = []
    for i, cc in enumerate(cfg.cohorts):
        p = f"cohorts.{i}"
        if cc.name not in COHORTS:
            errors.append(f"  {p}.name: unknown cohort {cc.name!r}; allowed: {', '.join(COHORTS)}")
            continue
        entry = COHORTS[cc.name]
        _check(errors, f"{p}.params", validate_cohort_params, cc.name, cc.params)
        for t in cc.task_configs:
            if entry.kind == "synthetic" and t not in entry.tasks:
                errors.append(f"  {p}.tasks.{t}: cohort {cc.name!r} supports only {', '.join(entry.tasks)}")
        for t, tc in cc.task_configs.items():
            _check(errors, f"{p}.tasks.{t}", validate_task_params, t, tc.arch, tc.params)
        for j, dc in enumerate(cc.degradations):
            dp = f"{p}.degradations.{j}"
            if dc.name not in DEGRADATIONS:
                errors.append(f"  {dp}.name: unknown degradation {dc.name!r}; allowed: {', '.join(DEGRADATIONS)}")
                continue
            mod = getattr(DEGRADATIONS[dc.name], "modality", "any")
            if mod not in ("any", entry.modality) and "|" not in entry.modality:
                errors.append(
                    f"  {dp}.name: {dc.name!r} simulates {mod} acquisitions but cohort {cc.name!r} is "
                    f"{entry.modality}; choose a degradation for {entry.modality} or 'masking'"
                )
            for k, level in enumerate(dc.levels):
                _check(errors, f"{dp}.levels.{k}", make_degradation, dc.name, level, **dc.params)
    labels = set()
    for i, rc in enumerate(cfg.reconstructors):
        p = f"reconstructors.{i}"
        labels.add(rc.display)
        if rc.name not in RECONSTRUCTORS:
            errors.append(f"  {p}.name: unknown reconstructor {rc.name!r}; allowed: {', '.join(RECONSTRUCTORS)}")
            continue
        _check(errors, f"{p}.params", validate_reconstructor_params, rc.name, rc.params)
        if rc.samples > 1 and not RECONSTRUCTORS[rc.name].stochastic:
            errors.append(f"  {p}.samples: {rc.name!r} is deterministic; samples > 1 needs a stochastic model (irsde)")
    for i, mc in enumerate(cfg.mitigations):
        p = f"mitigations.{i}"
        for name in mc.reconstructors or []:
            if name not in labels:
                errors.append(f"  {p}.reconstructors: {name!r} is not a reconstructor of this config; "
                              f"allowed: {', '.join(sorted(labels))}")
        for name in mc.cohorts or []:
            if name not in {c.name for c in cfg.cohorts}:
                errors.append(f"  {p}.cohorts: {name!r} is not a cohort of this config")
        if mc.name in ("eodd", "adversarial"):
            from reconaudit.engine.plan import cohort_tasks

            for j, cc in enumerate(cfg.cohorts):
                applies = mc.cohorts is None or cc.name in mc.cohorts
                if applies and cc.name in COHORTS and not cohort_tasks(cc):
                    errors.append(f"  {p}: {mc.name!r} trains against diagnostic models but cohort "
                                  f"{cc.name!r} (cohorts.{j}) has none (tasks: none, or no labels or masks); "
                                  f"list the other cohorts in {p}.cohorts")
        try:
            from reconaudit.mitigation import validate_mitigation_params

            _check(errors, f"{p}.params", validate_mitigation_params, mc.name, mc.params)
        except ImportError:
            pass
    if errors:
        raise ConfigError(f"invalid config {where}:\n" + "\n".join(errors))


def check_data(cfg: AuditConfig) -> list[dict]:
    """Read every loader cohort's tables and file headers (no pixel decoding) and check its tasks.

    Each cohort is built exactly as the ``cohort`` step builds it, inside
    :func:`reconaudit.cohorts._io.header_only`, so a data error raises the same
    :class:`~reconaudit.cohorts.base.CohortError` (same message) that ``reconaudit run`` would
    report; a task the cohort cannot serve (classification without labels, segmentation without
    masks) raises the message the ``task_model`` step would.  Synthetic cohorts are skipped (their
    parameters are validated by :func:`load_config`).

    Returns one summary per loader cohort: studies, patients, split sizes, labels, groups, unknown
    group values, impossible ages and drops by reason.
    """
    from reconaudit.cohorts import COHORTS, CohortError, make_cohort
    from reconaudit.cohorts._io import header_only
    from reconaudit.engine.plan import cohort_tasks
    from reconaudit.engine.steps import cohort_params, task_data_problem

    out = []
    for i, cc in enumerate(cfg.cohorts):
        if COHORTS[cc.name].kind == "synthetic":
            continue
        with header_only():
            cohort = make_cohort(cc.name, **cohort_params(cc.name, cc.params, cc.data_seed))
        tasks = sorted(cohort_tasks(cc))
        for t in tasks:
            problem = task_data_problem(cohort, t)
            if problem:
                raise CohortError(f"cohorts.{i}.tasks.{t}: {problem}")
        groups = cohort.meta.get("groups", {})
        out.append({
            "cohort": cc.name, "key": f"cohorts.{i}", "studies": len(cohort),
            "patients": int(cohort.table["patient_id"].nunique()),
            "splits": {s: int((cohort.table["split"] == s).sum()) for s in ("train", "val", "test")},
            "tasks": tasks or ["none"], "labels": list(cohort.labels), "groups": list(cohort.group_attributes),
            "unknown": groups.get("unknown", {}), "impossible_ages": groups.get("impossible_ages", 0),
            "dropped": cohort.meta.get("dropped", {}).get("by_reason", {}),
        })
    return out
