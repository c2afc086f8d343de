"""Test setup: 8 simulated CPU devices (sharded == unsharded checks), offline HF, shared paths."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the session (and the subprocesses it starts): the many runs of the tiny
# models compile the same programs again and again, and XLA CPU compiles take seconds each on 2 cores.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="saferlhf-jax-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """SFT / RM / CM / moderation stand-ins built from stories260K (a <pad> token added, fresh score heads): no
    training needed."""
    import transformers

    from saferlhf_jax import data as data_lib
    from saferlhf_jax import models

    root = tmp_path_factory.mktemp("tiny_models")
    tok = transformers.AutoTokenizer.from_pretrained(STORIES_DIR)
    data_lib.prepare_tokenizer(tok)
    lm = models.load_causal_lm(STORIES_DIR)
    lm, params = models.resize_token_embeddings(lm, lm.params, len(tok))
    models.save_pretrained(lm, params, root / "sft")
    tok.save_pretrained(root / "sft")
    for i, kind in enumerate(("reward", "cost", "moderation")):  # moderation: 24 end logits (algorithms/moderation)
        extra = {"score_dim": 24} if kind == "moderation" else {}
        sm = models.load_score_model(STORIES_DIR, score_type=kind, rng=10 + i, **extra)
        sm, params = models.resize_token_embeddings(sm, sm.params, len(tok))
        models.save_pretrained(sm, params, root / kind)
        tok.save_pretrained(root / kind)
    return root


def tiny_rl_config(mode: str, tiny_models, out, max_steps: int = 1):
    """A seconds-long RL config (`configs/<mode>.py:tiny`) on the tiny_models stand-ins: 4 prompts, 64 tokens, one
    device, no progress bar or tensorboard."""
    import importlib

    c = importlib.import_module(f"configs.{mode}").get_config("tiny")
    c.output_dir = str(out)
    c.actor_model_name_or_path = str(tiny_models / "sft")
    c.reward_model_name_or_path = str(tiny_models / "reward")
    c.cost_model_name_or_path = str(tiny_models / "cost")
    c.generation.max_length = 64
    c.data.max_prompt_length, c.data.prompt_buckets = 32, (32,)
    c.train.max_steps, c.train.prompt_batch_size, c.train.train_batch_size = max_steps, 4, 4
    c.logging.progress = c.logging.tensorboard = False
    c.mesh.fsdp = 1
    return c


# The test files that run for minutes, longest first. The CI runs two workers that take whole files in collection
# order (pytest-xdist --dist loadfile --no-loadscope-reorder; without the last flag xdist puts the files with the
# most tests first, and these one- or few-test files last), so one worker ran them after the other had finished
# everything else. Started first, the short files fill in around them (longest-processing-time order).
LONG_FILES = ("test_testbed_multi.py", "test_pipeline.py", "test_testbed.py")


def pytest_collection_modifyitems(items):
    """Long files first (LONG_FILES order), the rest in collection order; every worker sorts the same way, as xdist
    requires."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))
