"""A tiny audit config used by the engine tests (32x32, tens of studies, one epoch)."""

from __future__ import annotations

import copy


def tiny_config(**overrides) -> dict:
    cfg = {
        "name": "tiny",
        "seeds": [0],
        "device": "cpu",
        "cohorts": [
            {
                "name": "chest-xray",
                "params": {"n_studies": 72, "size": 32},
                "tasks": {"classification": {"arch": "small-cnn", "params": {"epochs": 1}}},
                "degradations": [{"name": "lowdose-xray", "levels": [10000, 3000], "params": {"model": "projection"}}],
            }
        ],
        "reconstructors": [
            {"name": "identity"},
            {"name": "unet", "params": {"epochs": 1}},
        ],
        "direct": {"enabled": True},
        "evaluation": {"examples": 2},
        "analysis": {"n_resamples": 50},
    }
    out = copy.deepcopy(cfg)
    out.update(overrides)
    return out
