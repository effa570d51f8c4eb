"""The data card of the chest X-ray cohort (size, prevalence per group, bias mechanisms)."""

from __future__ import annotations

import pandas as pd

from reconaudit.cohorts.chest_xray.params import (
    GROUP_VALUES,
    LABELS,
    ChestXrayParams,
)


def _data_card(params: ChestXrayParams, table: pd.DataFrame) -> str:
    n_pat = table["patient_id"].nunique()
    lines = [
        "# Data card: chest-xray (synthetic)",
        "",
        f"- studies: {len(table)}; patients: {n_pat}; image size: {params.size}x{params.size}; seed: {params.seed}",
        f"- studies per patient: {params.studies_per_patient[0]}-{params.studies_per_patient[1]}"
        f" (follow-up persistence rho = {params.follow_up_persistence:g})",
        "- splits (by patient): "
        + ", ".join(f"{s}: {int((table['split'] == s).sum())}" for s in ("train", "val", "test")),
        "- images: attenuation maps in [0, 1] (bright = dense), one channel",
        f"- findings: {', '.join(LABELS)}; co-occurrence from a Gaussian copula "
        f"(strength {params.co_occurrence_strength:g})",
        f"- bias preset: `{params.bias}`",
        "",
        "## Bias mechanisms switched on",
        "",
    ]
    active = params.active_biases()
    lines += [f"- {a}" for a in active] if active else ["- none (all knobs neutral)"]
    lines += ["", "## Prevalence per group (observed label / true finding)", ""]
    header = "| attribute | group | studies | " + " | ".join(LABELS) + " |"
    lines += [header, "|" + " --- |" * (3 + len(LABELS))]
    rows = [("all", "all", table)]
    for attr, values in GROUP_VALUES.items():
        rows += [(attr, v, table[table[attr] == v]) for v in values]
    for attr, v, sub in rows:
        cells = []
        for k in LABELS:
            if len(sub):
                cells.append(f"{sub[k].mean():.1%} / {sub['true_' + k].mean():.1%}")
            else:
                cells.append("-")
        lines.append(f"| {attr} | {v} | {len(sub)} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# ============================================================================ public entry points
