"""The records schema is defined once (reconaudit.schema) and the engine and the report use it."""

import subprocess
import sys

import pandas as pd
import pytest

from reconaudit import schema
from reconaudit.engine import records
from reconaudit.metrics import stats
from reconaudit.report import analysis


def test_schema_imports_nothing():
    code = "import sys, reconaudit.schema; print(sorted(m for m in ('numpy', 'pandas', 'torch', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engine_and_report_share_the_schema():
    assert tuple(records.KEY_COLUMNS) == schema.CELL_KEYS + schema.STUDY_KEYS
    assert analysis.KEY_COLUMNS is schema.CELL_KEYS
    assert stats.COUNT_METRICS is schema.COUNT_METRICS
    assert set(schema.COUNT_METRICS) < set(schema.CLASSIFICATION_FAIRNESS)
    assert schema.GAP_METRICS == set(schema.FAIRNESS_METRICS) - {"worst_group_auroc", "worst_group_dice"}


def test_records_columns_are_ordered_keys_then_prefixes():
    df = pd.DataFrame(columns=["psnr", "score:a", "group:sex", "study_id", "cell_id", "target:a", "x"])
    assert list(records._order_columns(df).columns) == ["cell_id", "study_id", "group:sex", "target:a", "score:a",
                                                        "psnr", "x"]
    assert schema.column(schema.SCORE, "effusion") == "score:effusion"
    assert schema.names(["target:a", "score:a", "target:b"], schema.TARGET) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown column prefix 'scores:'"):
        schema.column("scores:", "a")
