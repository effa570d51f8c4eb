"""Second-level config validation: every named component and its parameters, before any work."""

from __future__ import annotations

from reconaudit.engine.config import AuditConfig, ConfigError


def _check(errors: list[str], path: str, fn, *args, **kwargs) -> object:
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        errors.append(f"  {path}: {e}")
        return None


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
    n = None if kind == "classification" else 1
    make_task_model(kind, arch=arch, device="cpu", in_channels=1, n_outputs=n or 2, **params)


def validate_components(cfg: AuditConfig, where: str = "<config>", build_plugins: bool = True) -> None:
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
        for t in cc.tasks:
            if entry.kind == "synthetic" and t not in entry.tasks:
                errors.append(f"  {p}.tasks.{t}: cohort {cc.name!r} supports only {', '.join(entry.tasks)}")
        for t, tc in cc.tasks.items():
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
            for k, level in enumerate(dc.levels):
                _check(errors, f"{dp}.levels.{k}", make_degradation, dc.name, level, **dc.params)
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
        try:
            from reconaudit.mitigation import validate_mitigation_params

            _check(errors, f"{p}.params", validate_mitigation_params, mc.name, mc.params)
        except ImportError:
            pass
    if errors:
        raise ConfigError(f"invalid config {where}:\n" + "\n".join(errors))
