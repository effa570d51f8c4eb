"""Second-level config validation: every named component and its parameters, before any work."""

from __future__ import annotations

from reconaudit.engine.config import AuditConfig, ConfigError


def _check(errors: list[str], path: str, fn, *args, **kwargs) -> object:
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        errors.append(f"  {path}: {e}")
        return None


def _split_counts(n_patients: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Patients per split as :func:`reconaudit.cohorts.assign_splits_by_patient` cuts them."""
    n_train = int(round(fractions[0] * n_patients))
    n_val = int(round(fractions[1] * n_patients))
    return n_train, n_val, n_patients - n_train - n_val


def check_split_sizes(params: object) -> None:
    """Refuse a synthetic cohort too small to give every split (train, val, test) a patient.

    The patients of ``n_studies`` studies with ``studies_per_patient = (lo, hi)`` number between
    ``ceil(n / hi)`` and ``ceil(n / lo)`` (``n_subjects`` patients for a cohort that counts them);
    splits are cut at ``round(f_train P)`` and ``round(f_val P)`` patients, the rest is test.  Every
    count in that range must leave each split non-empty; the message names the smallest size that does.
    """
    import math

    fractions = getattr(params, "split_fractions", None)
    if fractions is None:
        return
    if hasattr(params, "n_subjects"):
        key, n, lo, hi = "n_subjects", int(params.n_subjects), 1, 1
    elif hasattr(params, "n_studies"):
        lo, hi = getattr(params, "studies_per_patient", (1, 1))
        key, n = "n_studies", int(params.n_studies)
    else:
        return

    def ok(size: int) -> bool:
        return all(min(_split_counts(pp, fractions)) >= 1
                   for pp in range(math.ceil(size / hi), math.ceil(size / lo) + 1))

    if not ok(n):
        need = next((m for m in range(n + 1, 100_000) if ok(m)), None)
        hint = f"use at least {need}" if need else "check split_fractions"
        raise ValueError(f"{key}={n} is too small to give each of train/val/test a patient with split_fractions "
                         f"{tuple(fractions)}; {hint}")


def _check_degradation(errors: list[str], dp: str, dc) -> None:
    """Build the degradation at every level; an error about the level goes under ``levels.K``, one
    about the other parameters once under ``params``."""
    from reconaudit.physics import DEGRADATIONS, make_degradation

    level_name = getattr(DEGRADATIONS[dc.name], "level_name", "level")
    param_errors: list[str] = []
    for k, level in enumerate(dc.levels):
        try:
            make_degradation(dc.name, level, **dc.params)
        except (ValueError, TypeError, KeyError) as e:
            msg = str(e)
            about_level = level_name in msg.replace(f"{level_name!r} is the level", "") or "level" in msg.split(";")[0]
            if "unknown parameter" in msg or "not among the parameters" in msg or not about_level:
                if msg not in param_errors:
                    param_errors.append(msg)
            else:
                errors.append(f"  {dp}.levels.{k}: {msg}")
    errors.extend(f"  {dp}.params: {m}" for m in param_errors)


def _check_plugin_unbuilt(params: dict) -> None:
    """A plug-in's target importable and its weights file readable, without calling the factory."""
    from reconaudit.plugins import import_target, load_state_dict_file

    import_target(params.get("target"))
    if params.get("weights") is not None:
        load_state_dict_file(params["weights"], key="weights")


def validate_reconstructor_params(name: str, params: dict, build_plugins: bool = True) -> None:
    """Check a reconstructor's parameters (by its pydantic ``Params`` model, or by building it).

    A ``plugin`` is built (its factory called, its weights loaded into the module) only with
    ``build_plugins=True``; otherwise its parameters, target and weights file are checked.
    """
    from reconaudit.recon import RECONSTRUCTORS, make_reconstructor

    cls = RECONSTRUCTORS[name]
    if hasattr(cls, "Params") and name not in ("plugin", "folder"):
        from reconaudit.recon.training import validate_params

        validate_params(cls, params)
    elif name == "plugin" and not build_plugins:
        from reconaudit.recon.training import validate_params

        validate_params(cls, params)
        _check_plugin_unbuilt(params)
    else:
        make_reconstructor(name, device="cpu", **params)


def validate_task_params(kind: str, arch: str, params: dict, build_plugins: bool = True) -> None:
    """Check a diagnostic model's kind, arch and parameters by building it (cheap, untrained).

    A ``plugin`` model is only checked (target importable, weights readable) with ``build_plugins=False``.
    """
    from reconaudit.tasks import make_task_model

    if arch == "plugin" and not build_plugins:
        _check_plugin_unbuilt(params)
        return
    n = None if kind in ("classification", "regression") else 1
    make_task_model(kind, arch=arch, device="cpu", in_channels=1, n_outputs=n or 2, **params)


def _supported(name: str, params: dict) -> tuple[str, ...]:
    from reconaudit.cohorts import supported_tasks

    try:
        return supported_tasks(name, params)
    except Exception:  # noqa: BLE001 - a params error is reported by the params check
        return ()


def validate_components(cfg: AuditConfig, where: str = "<config>", build_plugins: bool = True) -> None:
    """Check cohort, degradation, reconstructor, task and mitigation names and parameters.

    Raises :class:`ConfigError` listing every problem with its key path and the allowed values.
    """
    from reconaudit.cohorts import COHORTS, validate_cohort_params
    from reconaudit.physics import DEGRADATIONS
    from reconaudit.recon import RECONSTRUCTORS

    errors: list[str] = []
    for i, cc in enumerate(cfg.cohorts):
        p = f"cohorts.{i}"
        if cc.name not in COHORTS:
            errors.append(f"  {p}.name: unknown cohort {cc.name!r}; allowed: {', '.join(COHORTS)}")
            continue
        entry = COHORTS[cc.name]
        validated = _check(errors, f"{p}.params", validate_cohort_params, cc.name, cc.params)
        if validated is not None:
            _check(errors, f"{p}.params", check_split_sizes, validated)
        for t in cc.task_configs:
            if entry.kind == "synthetic" and t not in entry.tasks:
                errors.append(f"  {p}.tasks.{t}: cohort {cc.name!r} supports only {', '.join(entry.tasks)}")
            elif t == "regression" and entry.kind == "synthetic" and t not in _supported(cc.name, cc.params):
                errors.append(f"  {p}.tasks.regression: cohort {cc.name!r} has no regression targets with these "
                              f"params; set {p}.params.regression_columns (the phenotypes to regress)")
        for t, tc in cc.task_configs.items():
            _check(errors, f"{p}.tasks.{t}", validate_task_params, t, tc.arch, tc.params, build_plugins)
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
            _check_degradation(errors, dp, dc)
    labels = set()
    for i, rc in enumerate(cfg.reconstructors):
        p = f"reconstructors.{i}"
        labels.add(rc.display)
        if rc.name not in RECONSTRUCTORS:
            errors.append(f"  {p}.name: unknown reconstructor {rc.name!r}; allowed: {', '.join(RECONSTRUCTORS)}")
            continue
        _check(errors, f"{p}.params", validate_reconstructor_params, rc.name, rc.params, build_plugins)
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
        from reconaudit.mitigation import MITIGATIONS, validate_mitigation_params

        if mc.name not in MITIGATIONS:
            errors.append(f"  {p}.name: unknown mitigation {mc.name!r}; allowed: {', '.join(MITIGATIONS)}")
            continue
        if MITIGATIONS[mc.name].fine_tunes:
            from reconaudit.engine.plan import cohort_tasks

            for j, cc in enumerate(cfg.cohorts):
                applies = mc.cohorts is None or cc.name in mc.cohorts
                if applies and cc.name in COHORTS and not cohort_tasks(cc):
                    errors.append(f"  {p}: {mc.name!r} trains against diagnostic models but cohort "
                                  f"{cc.name!r} (cohorts.{j}) has none (tasks: none, or no labels or masks); "
                                  f"list the other cohorts in {p}.cohorts")
        _check(errors, f"{p}.params", validate_mitigation_params, mc.name, mc.params)
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
