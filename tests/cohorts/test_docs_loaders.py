"""docs/loaders.md: every example config loads, every option and every drop reason is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from reconaudit.cohorts.chexpert import ChexpertParams
from reconaudit.cohorts.dicom import DicomParams
from reconaudit.cohorts.fastmri import FastmriParams
from reconaudit.cohorts.groups import GroupOptions
from reconaudit.cohorts.manifest import ManifestParams
from reconaudit.cohorts.ucsf_pdgm import UcsfPdgmParams
from reconaudit.engine.config import load_config

REPO = Path(__file__).parents[2]
DOC = (REPO / "docs" / "loaders.md").read_text()
SECTIONS = {"## CheXpert": ChexpertParams, "## UCSF-PDGM": UcsfPdgmParams, "## fastMRI": FastmriParams,
            "## A folder of DICOM files": DicomParams, "## Generic manifest": ManifestParams,
            "## Group values": GroupOptions}


def _section(heading: str) -> str:
    start = DOC.index(heading)
    nxt = DOC.find("\n## ", start + 1)
    return DOC[start: nxt if nxt > 0 else len(DOC)]


def _yaml_blocks() -> list[str]:
    return [b for b in re.findall(r"```yaml\n(.*?)```", DOC, flags=re.S) if "cohorts:" in b]


@pytest.mark.parametrize("block", _yaml_blocks(), ids=lambda b: yaml.safe_load(b)["name"])
def test_every_example_config_loads(block):
    cfg = load_config(yaml.safe_load(block))
    assert cfg.cohorts and cfg.reconstructors


def test_one_example_per_loader():
    names = {c["name"] for b in _yaml_blocks() for c in yaml.safe_load(b)["cohorts"]}
    assert {"chexpert", "ucsf-pdgm", "fastmri", "dicom", "manifest"} <= names
    assert "- loader:" not in DOC  # the schema's key is `name`


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_every_option_documented(heading):
    model = SECTIONS[heading]
    own = set(model.model_fields) - (set() if model is GroupOptions else set(GroupOptions.model_fields))
    table = [ln for ln in _section(heading).splitlines() if ln.startswith("| `")]
    documented = {name for ln in table for name in re.findall(r"`([a-z_]+)`", ln.split("|")[1])}
    assert documented == own, (heading, sorted(own ^ documented))


def test_every_drop_reason_documented():
    src = "\n".join(p.read_text() for p in (REPO / "src" / "reconaudit" / "cohorts").glob("*.py"))
    reasons = set(re.findall(r'drops\.add\(\s*"([^"]+)"', src))
    reasons |= set(re.findall(r'ImageDropError\(\s*"([^"]+)"', src))
    reasons |= set(re.findall(r'return \(\s*"([^"]+)",\s*f"', src))  # fastmri.undersampled_reason
    assert len(reasons) >= 20 and {"undersampled file (test/challenge)", "no reference reconstruction"} <= reasons
    table = _section("## Validation and dropped rows")
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing
