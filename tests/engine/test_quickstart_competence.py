"""The real quickstart: every learned reconstructor beats the no-reconstruction baseline everywhere.

Runs the whole quickstart (minutes on 2 cores), so it runs only on request:
``RECONAUDIT_QUICKSTART=1 pytest -m slow tests/engine/test_quickstart_competence.py``; with
``RECONAUDIT_QUICKSTART=RUN_DIR`` it checks a finished run (``reconaudit run quickstart --out RUN_DIR``)
instead of running one.
"""

import os
from pathlib import Path

import pytest

from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit
from reconaudit.report import analyse
from reconaudit.report.html import load_run

LEARNED = ("unet", "pix2pix", "irsde")
_WHAT = os.environ.get("RECONAUDIT_QUICKSTART", "")


@pytest.mark.slow
@pytest.mark.skipif(not _WHAT, reason="set RECONAUDIT_QUICKSTART=1 (run it) or =RUN_DIR (check a run)")
def test_every_learned_reconstructor_beats_identity_at_every_level(tmp_path):
    cfg = load_config("quickstart")
    if _WHAT == "1":
        run_dir = tmp_path / "qs"
        assert run_audit(cfg, run_dir, report=False).summary.ok
    else:
        run_dir = Path(_WHAT)
    records, meta = load_run(run_dir)
    a = analyse(records, meta)
    comp = a.competence[a.competence["mitigation"] == "none"]
    levels = {(c.name, float(v)) for c in cfg.cohorts for d in c.degradations for v in d.levels}
    for name in LEARNED:
        mine = comp[comp["reconstructor"] == name]
        assert {(c, float(v)) for c, v in zip(mine["cohort"], mine["level"])} == levels
        below = mine[mine["below_psnr"] | mine["below_ssim"]]
        assert below.empty, below[["cohort", "level", "psnr", "baseline_psnr", "ssim", "baseline_ssim"]].to_string()
