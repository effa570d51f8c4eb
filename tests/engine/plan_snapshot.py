"""A compact fingerprint of the plans of the bundled configs: step ids (kind/key), deps, cell ids.

``python -m tests.engine.plan_snapshot`` rewrites ``tests/engine/data/plan_keys.json``; do that only
when a change to the keys is intended (a ``STEP_VERSIONS`` bump), since every stored artifact of the
old keys is then recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reconaudit.engine.config import bundled_config_path, load_config
from reconaudit.engine.plan import build_plan

BUNDLED = ("quickstart", "multicoil", "mitigation", "paper-xray", "paper-mri", "generative")
SNAPSHOT = Path(__file__).parent / "data" / "plan_keys.json"


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def fingerprint(name: str) -> dict:
    """Per step kind: the count and a digest of its ``id <- deps`` lines; a digest of the cell ids;
    for ``quickstart`` also the full list of step ids (readable when a key moves)."""
    plan = build_plan(load_config(bundled_config_path(name)))
    by_kind: dict[str, list[str]] = {}
    for sid, s in plan.steps.items():
        by_kind.setdefault(s.kind, []).append(f"{sid} <- {','.join(sorted(s.deps))}")
    out = {
        "kinds": {k: {"count": len(v), "digest": _digest(v)} for k, v in sorted(by_kind.items())},
        "cells": _digest([f"{c.cell_id} {c.final_step}" for c in plan.cells]),
    }
    if name == "quickstart":
        out["step_ids"] = sorted(plan.steps)
    return out


def snapshot() -> dict:
    """The fingerprint of every bundled config."""
    return {name: fingerprint(name) for name in BUNDLED}


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
