"""The step ids, deps and cell ids of every bundled config are those of the saved snapshot.

Stores written before a change to how the plan is built stay valid only if the keys do not move.
"""

import json

import pytest

from tests.engine.plan_snapshot import BUNDLED, SNAPSHOT, fingerprint


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_plan_keys_are_unchanged(name):
    saved = json.loads(SNAPSHOT.read_text())[name]
    assert fingerprint(name) == saved
