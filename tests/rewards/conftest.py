"""Tests in this folder may register rewards; each test gets the registry back as it found it."""

import pytest

from rewards.registry import REWARDS


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(REWARDS)
    yield
    REWARDS.clear()
    REWARDS.update(saved)
