r"""Is a reconstructor better than no reconstruction at all?

An audit's findings about a reconstructor ("diffusion hurts the Dice", "the GAN widens the
equalized-odds gap") are findings about *that trained model*.  When the model is worse than
handing the degraded input on unchanged, the findings describe an undertrained model rather than
the method, and a report must say so.  :func:`competence` compares every reconstructed cell with the
no-reconstruction baseline at the same cohort, degradation, level and training seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["BELOW_BASELINE_NOTE", "competence"]

#: The words a report prints next to a reconstructor that is below the baseline.
BELOW_BASELINE_NOTE = "below the no-reconstruction baseline: findings about it reflect an undertrained model"

_CELL_KEYS = ("cohort", "degradation", "level", "seed")
_COLUMNS = [
    "cell_id", "cohort", "degradation", "level", "reconstructor", "mitigation", "mitigation_strength", "seed",
    "psnr", "baseline_psnr", "ssim", "baseline_ssim", "task_metric", "task_label", "task", "baseline_task",
    "below_psnr", "below_ssim", "below_task", "below_baseline", "below_metrics", "note",
]
_TASK_NAMES = {"auroc": "AUROC", "dice": "Dice", "dice_patient": "Dice", "hd95": "HD95"}


def competence(
    cells: pd.DataFrame,
    task: pd.DataFrame | None = None,
    *,
    primary: dict[str, tuple[str, str]] | None = None,
    baseline: str = "identity",
    task_tolerance: float = 0.01,
) -> pd.DataFrame:
    r"""Flag reconstructed cells that are worse than no reconstruction.

    For every cell of the ``reconstruct`` arm other than the baseline reconstructor itself, with
    :math:`q` its mean PSNR or SSIM on the test studies and :math:`q_{in}` the same metric of the
    degraded input it was given (``input_psnr`` / ``input_ssim`` of the same cell, which is exactly
    what the ``identity`` reconstructor scores), and :math:`m` the cohort's primary task metric
    (mean AUROC or mean Dice) on the reconstruction against :math:`m_{base}`, the same metric for
    the ``baseline`` reconstructor's cell at the same cohort, degradation, level and seed:

    .. math::

        \text{below}_q = q < q_{in}, \qquad \text{below}_{task} = m < m_{base} - \tau, \qquad
        \text{below} = \text{below}_{PSNR} \lor \text{below}_{SSIM} \lor \text{below}_{task}

    (point estimates; a metric that is missing never flags).  The task tolerance :math:`\tau`
    (``task_tolerance``, 0.01 AUROC or Dice by default) keeps sampling noise from calling a model
    undertrained: on a few hundred test studies two equally good inputs differ in mean AUROC by
    about 0.01 to 0.02, while PSNR and SSIM of the same studies are far more precise.

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell (``Analysis.cells``): ``cell_id``, ``cohort``, ``degradation``, ``level``,
        ``reconstructor``, ``arm``, ``mitigation``, ``mitigation_strength``, ``seed``, ``psnr``,
        ``ssim``, ``input_psnr``, ``input_ssim``.
    task : pandas.DataFrame, optional
        Task rows (``Analysis.task``): ``cell_id``, ``metric``, ``label``, ``recon``.  Without it,
        or without a baseline cell, only image quality is compared.
    primary : dict, optional
        Per cohort the (metric, label) of its primary task metric (``Analysis.cohorts[c]["primary"]``).
    baseline : str
        The no-reconstruction reconstructor (default ``"identity"``).
    task_tolerance : float
        How far below the baseline's task metric a cell must fall to be flagged (default 0.01).

    Returns
    -------
    pandas.DataFrame
        One row per compared cell: the keys, ``psnr``/``baseline_psnr``, ``ssim``/``baseline_ssim``,
        ``task_metric``, ``task_label``, ``task``/``baseline_task``, the booleans ``below_psnr``,
        ``below_ssim``, ``below_task``, ``below_baseline``, ``below_metrics`` (e.g. ``"PSNR, SSIM"``) and
        ``note`` (empty, or ``below_metrics`` followed by :data:`BELOW_BASELINE_NOTE`).
    """
    required = {"cell_id", "reconstructor", "arm", *_CELL_KEYS}
    missing = sorted(required - set(cells.columns))
    if missing:
        raise ValueError(f"competence: the cells table lacks column(s) {missing}")
    rec = cells[(cells["arm"] == "reconstruct") & (cells["reconstructor"] != baseline)]
    if rec.empty:
        return pd.DataFrame(columns=_COLUMNS)
    out = rec[[c for c in _COLUMNS[:8] if c in rec.columns]].copy()
    for q in ("psnr", "ssim"):
        out[q] = rec[q].astype(float) if q in rec else np.nan
        out[f"baseline_{q}"] = rec[f"input_{q}"].astype(float) if f"input_{q}" in rec else np.nan
    out["task_metric"], out["task_label"] = "", ""
    out["task"] = out["baseline_task"] = np.nan
    if task is not None and primary and not task.empty:
        pm = pd.Series({c: primary.get(c, ("", ""))[0] for c in out["cohort"].unique()})
        pl = pd.Series({c: primary.get(c, ("", ""))[1] for c in out["cohort"].unique()})
        out["task_metric"] = out["cohort"].map(pm).fillna("")
        out["task_label"] = out["cohort"].map(pl).fillna("")
        key = task.set_index(["cell_id", "metric", "label"])["recon"]
        key = key[~key.index.duplicated()]

        def lookup(ids: pd.Series) -> np.ndarray:
            idx = pd.MultiIndex.from_arrays([ids, out["task_metric"], out["task_label"]])
            return key.reindex(idx).to_numpy(float)

        out["task"] = lookup(out["cell_id"])
        base = cells[(cells["arm"] == "reconstruct") & (cells["reconstructor"] == baseline)
                     & (cells.get("mitigation", "none") == "none")]
        base_ids = base.drop_duplicates(list(_CELL_KEYS)).set_index(list(_CELL_KEYS))["cell_id"]
        ids = base_ids.reindex(pd.MultiIndex.from_frame(out[list(_CELL_KEYS)])).to_numpy()
        out["baseline_task"] = lookup(pd.Series(ids, index=out.index))
    with np.errstate(invalid="ignore"):
        out["below_psnr"] = (out["psnr"] < out["baseline_psnr"]).to_numpy(bool)
        out["below_ssim"] = (out["ssim"] < out["baseline_ssim"]).to_numpy(bool)
        out["below_task"] = (out["task"] < out["baseline_task"] - task_tolerance).to_numpy(bool)
    out["below_baseline"] = out["below_psnr"] | out["below_ssim"] | out["below_task"]
    what = []
    for _, r in out.iterrows():
        task_name = _TASK_NAMES.get(r["task_metric"], r["task_metric"] or "task metric")
        what.append(", ".join(n for n, flag in (("PSNR", r["below_psnr"]), ("SSIM", r["below_ssim"]),
                                                (task_name, r["below_task"])) if flag))
    out["below_metrics"] = what
    out["note"] = [f"{w} {BELOW_BASELINE_NOTE}" if w else "" for w in what]
    return out.reset_index(drop=True)[_COLUMNS]
