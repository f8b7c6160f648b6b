"""Fixtures shared by the training tests: one tiny paired phantom set and one slice cache per test module."""
import pytest

from helpers import tiny_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return tiny_phantom_dataset(tmp_path_factory.mktemp("phantoms"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")
