"""Test setup: 8 simulated CPU devices (sharded == unsharded checks), offline HF, shared paths."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
STORIES_DIR = REPO / "saferlhf_jax" / "assets" / "stories260K"


@pytest.fixture(scope="session")
def stories_dir():
    return STORIES_DIR


@pytest.fixture(scope="session")
def test_data():
    return TEST_DATA
