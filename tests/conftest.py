"""Shared fixtures. `compose_cfg(*overrides, search_path=None)` composes the project's config exactly as
`run.py` does (schemas registered, conf/ as the primary config dir); `search_path` adds a config folder (the
`hydra.searchpath` mechanism a user's own method or preset folder would use)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from snnconv.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str, search_path: str | Path | None = None, return_hydra_config: bool = False):
    register_configs()
    extra = [f"hydra.searchpath=[file://{Path(search_path).resolve()}]"] if search_path else []
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="config", overrides=[*extra, *overrides], return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def compose_cfg():
    return compose_config
