"""Fixtures of the reconstructor tests (data helpers live in _recon_data.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
