"""The training histories of a run's trained models, gathered from their artifacts for ``run.json``.

Every fitting step (``fit_recon``, ``task_model``, ``direct_model``) saves the history its
``fit`` returned in the artifact's ``info.json``; :func:`training_histories` lists them with the
names a reader knows (cohort, level, model), so the report can draw loss per epoch without
opening the store.
"""

from __future__ import annotations

import json
import math

from reconaudit.engine.plan import Plan
from reconaudit.engine.store import ArtifactStore

__all__ = ["TRAINED_KINDS", "training_histories"]

#: Step kinds that train a model, and what the report calls them.
TRAINED_KINDS = {"fit_recon": "reconstructor", "task_model": "diagnostic model",
                 "direct_model": "direct diagnostic model"}


def _floats(values: object) -> list[float | None]:
    """Loss values as JSON-safe floats (``None`` for a non-finite value)."""
    out: list[float | None] = []
    for v in values if isinstance(values, list) else []:
        f = float(v) if isinstance(v, int | float) else math.nan
        out.append(f if math.isfinite(f) else None)
    return out


def training_histories(plan: Plan, store: ArtifactStore) -> list[dict]:
    """One entry per finished fitting step of ``plan``.

    Returns
    -------
    list of dict
        ``kind`` (see :data:`TRAINED_KINDS`), ``model`` (reconstructor name, or the task for
        diagnostic models), ``cohort``, ``degradation`` and ``level`` (``None`` for models trained
        on clean images), ``mitigation`` (name and strength, or ``"none"``), ``seed``,
        ``train_loss`` and ``val_loss`` (per epoch, as saved by the step's ``fit``) and
        ``best_epoch`` (1-based, or ``None``).  Steps without a history (untrained plug-ins,
        reconstructors with nothing to fit) are left out.
    """
    cohorts = {s.key: s.spec.name for s in plan.steps.values() if s.kind == "cohort"}
    degrades = {s.key: s.spec.as_dict() for s in plan.steps.values() if s.kind == "degrade"}
    out: list[dict] = []
    for step in plan.ordered():
        if step.kind not in TRAINED_KINDS or not store.exists(step.kind, step.key):
            continue
        path = store.path(step.kind, step.key) / "info.json"
        if not path.exists():
            continue
        hist = json.loads(path.read_text(encoding="utf-8")).get("history") or {}
        train, val = _floats(hist.get("train_loss")), _floats(hist.get("val_loss"))
        if not train and not val:
            continue
        spec = step.spec.as_dict()  # the typed spec's fields, as its key hashes them
        deg = degrades.get(spec.get("degrade", ""), {})
        mit = spec.get("mitigation")
        out.append({
            "kind": TRAINED_KINDS[step.kind],
            "model": spec["reconstructor"] if step.kind == "fit_recon" else spec["task"],
            "cohort": cohorts.get(spec["cohort"], spec["cohort"]),
            "degradation": deg.get("degradation"),
            "level": deg.get("level"),
            "mitigation": "none" if not mit else f"{mit['name']} {mit['strength']:g}",
            "seed": int(spec["seed"]),
            "train_loss": train,
            "val_loss": val,
            "best_epoch": hist.get("best_epoch"),
        })
    return out
