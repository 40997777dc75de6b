"""Tests in this folder may register rewards; each test gets the registry back as it found it."""

import pytest


@pytest.fixture(autouse=True)
def _every_test_restores_the_registry(restore_registry):
    yield
