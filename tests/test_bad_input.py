"""Hostile and bad input, as a user would give it to the command-line tools: no code runs that the user did not ask
for, every case is one clear line (exit 2) or an explicit, counted note — never a traceback, never a silently wrong
result with exit 0. The README's "Bad input" table lists the same cases."""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import shutil

import pytest

from launch.common import run_rl_cli, run_training_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def _sft(out, *extra):
    return ["prog", "--config=configs/sft.py:tiny", f"--config.output_dir={out}", "--config.logging.progress=False",
            "--config.logging.tensorboard=False", "--config.mesh.fsdp=1", "--config.train.max_steps=2",
            "--config.eval_datasets=()", "--config.train_datasets=alpaca:16/-1", *extra]


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------------------------------- security


@pytest.fixture()
def remote_code_dir(tmp_path, stories_dir):
    """A model directory whose tokenizer asks transformers to import a module that leaves a marker when it runs."""
    d = tmp_path / "evil"
    shutil.copytree(stories_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil_tok.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "CODE_RAN"
    (d / "evil_tok.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                   "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    return d, marker


def test_remote_code_tokenizer_never_runs_even_with_yes_on_stdin(remote_code_dir, tmp_path, monkeypatch, capsys):
    from launch import chat, generate

    d, marker = remote_code_dir
    monkeypatch.setattr("sys.stdin", io.StringIO("y\ny\ny\n"))  # what `printf 'y\n' | …` would answer
    assert chat.main(["--model", str(d)], stdin=io.StringIO("hello\n/quit\n"), out=io.StringIO()) == 2
    _one_error_line(capsys.readouterr().err, "never runs such code")
    assert generate.main(["--model", str(d), "--prompt", "Once"]) == 2
    assert "never runs such code" in capsys.readouterr().err
    assert run_training_cli("sft", "", _sft(tmp_path / "run", f"--config.model_name_or_path={d}")) == 2
    _one_error_line(capsys.readouterr().err, "auto_map")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- data


def test_bad_data_files_name_file_and_line(tmp_path):
    from saferlhf_jax import data
    from saferlhf_jax.errors import DataError

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"instruction": "ok", "output": "fine"}\n{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 21\)"):
        data.load_raw("alpaca", str(bad))
    csv_bad = tmp_path / "rows.csv"
    csv_bad.write_bytes(b"instruction,output\nok,fine\nbad,\xff\xfe\n")
    with pytest.raises(DataError, match=r"rows.csv:3: not UTF-8"):
        data.load_raw("alpaca", str(csv_bad))
    # a PKU row without safer_response_id is no safety preference: the cost model says so (never copies `better`)
    row = json.loads((data.registry.ASSETS / "pku_saferlhf" / "train_first500.jsonl").read_text().splitlines()[0])
    del row["safer_response_id"]
    (tmp_path / "pku.jsonl").write_text(json.dumps(row) + "\n")
    sample = data.load_raw("PKU-SafeRLHF/train", str(tmp_path / "pku.jsonl"))[0]
    assert sample.safer is None and sample.better is not None
    with pytest.raises(DataError, match=r"pku.jsonl:1: a safety_preference example needs safer \(safer_response_id\)"):
        data.build_dataset("safety_preference", [sample], _tok(), 128)


def _tok():
    from saferlhf_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(REPO / "saferlhf_jax" / "assets" / "stories260K")


@pytest.mark.parametrize("extra,needles", [
    (["--config.train.learning_rate=-1e-3"], ("train.learning_rate must be a positive number",)),
    (["--config.train.weight_decay=-0.1"], ("train.weight_decay must be ≥ 0",)),
    (["--config.data.max_length=8", "--config.data.buckets=(8,)"], ("no usable supervised examples",
                                                                     "no_target_tokens")),
    (["--config.train.batch_size=32"], ("fewer than one batch",)),
    (["--config.model_name_or_path=/nonexistent/model"], ("model directory not found: /nonexistent/model",)),
    (["--config.train.max_steps=0", "--config.train.epochs=0"], ("train.epochs must be ≥ 1",)),  # was: 0 steps, exit 0
    (["--config.seed=-1"], ("seed must be an integer in [0, 2**32), got -1",)),  # was: numpy's ValueError traceback
])
def test_supervised_config_and_data_errors_are_one_line(tmp_path, capsys, extra, needles):
    assert run_training_cli("sft", "", _sft(tmp_path / "run", *extra)) == 2
    _one_error_line(capsys.readouterr().err, *needles)
    # a run refused for its config, data or model writes nothing into the directory it would have created (it
    # used to leave config.json and checkpoints/ behind, which the next run took for a resume)
    assert not (tmp_path / "run").exists()


def test_an_output_dir_that_cannot_hold_a_run_is_one_line(tmp_path, capsys):
    assert run_training_cli("sft", "", _sft(pathlib.Path("/proc/self/saferlhf_run"))) == 2
    _one_error_line(capsys.readouterr().err, "output_dir /proc/self/saferlhf_run")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert run_training_cli("sft", "", _sft(existing, "--config.train.batch_size=32")) == 2
    assert (existing / "notes.txt").read_text() == "mine"  # a directory the run did not create is never removed


@pytest.mark.parametrize("preset,key,value", [("dpo", "beta", 0.0), ("safedpo", "safety_margin", -1.0),
                                               ("reward", "regularization", -0.1)])
def test_loss_settings_outside_their_domain_are_refused(preset, key, value):
    """Each of these trained without complaint before (β = 0: DPO's loss is log 2 whatever the policy does)."""
    import importlib

    from saferlhf_jax.errors import ConfigError
    from saferlhf_jax.training.trainer import validate_config

    import jax

    from saferlhf_jax.parallel.mesh import make_mesh

    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    cfg = importlib.import_module(f"configs.{preset}").get_config("tiny")
    validate_config(cfg, mesh)
    cfg.loss[key] = value
    with pytest.raises(ConfigError, match=f"loss.{key} must be"):
        validate_config(cfg, mesh)


def test_unsupported_architecture_is_one_line(tmp_path, stories_dir, capsys):
    d = tmp_path / "gpt2"
    shutil.copytree(stories_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert run_training_cli("sft", "", _sft(tmp_path / "run", f"--config.model_name_or_path={d}")) == 2
    _one_error_line(capsys.readouterr().err, "unsupported model_type 'gpt2'")


# ---------------------------------------------------------------------------------------------------- RL


def _rl(models_dir, out, *extra):
    return ["prog", "--config=configs/ppo.py:tiny", f"--config.output_dir={out}",
            f"--config.actor_model_name_or_path={models_dir / 'sft'}",
            f"--config.reward_model_name_or_path={models_dir / 'reward'}", "--config.generation.max_length=64",
            "--config.data.max_prompt_length=32", "--config.data.prompt_buckets=(32,)",
            "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.mesh.fsdp=1", *extra]


def test_rl_scorer_without_a_score_head_is_refused(tiny_models, tmp_path, capsys):
    argv = _rl(tiny_models, tmp_path / "run", f"--config.reward_model_name_or_path={tiny_models / 'sft'}")
    assert run_rl_cli("", argv) == 2
    _one_error_line(capsys.readouterr().err, "has no score head", "allow_new_head")
    assert run_rl_cli("", _rl(tiny_models, tmp_path / "run2", "--config.critic.learning_rate=0")) == 2
    _one_error_line(capsys.readouterr().err, "critic.learning_rate must be a positive number")
    assert not (tmp_path / "run2").exists()  # refused before anything is written


def test_a_score_model_is_refused_as_a_policy(tiny_models, tmp_path, capsys):
    """The other way round: a reward model given as the actor (or to generate/chat) used to load its backbone with
    the tied embeddings as a language-model head and its score head dropped — RL trained it, exit 0."""
    from launch import generate

    argv = _rl(tiny_models, tmp_path / "run", f"--config.actor_model_name_or_path={tiny_models / 'reward'}")
    assert run_rl_cli("", argv) == 2
    _one_error_line(capsys.readouterr().err, "is a score model (LlamaForScore", "not a causal LM")
    assert generate.main(["--model", str(tiny_models / "reward"), "--prompt", "Once"]) == 2
    _one_error_line(capsys.readouterr().err, "is a score model")


def test_converters_never_write_over_another_model(tmp_path, test_data, capsys):
    """convert_gguf / convert_llama2c used to write config.json and the weights into any existing directory."""
    from launch import convert_gguf, convert_llama2c

    taken = tmp_path / "sft_export"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    ckpt, tok = test_data / "llama2c" / "stories260K.bin", test_data / "llama2c" / "tok512.bin"
    argv = ["--checkpoint", str(ckpt), "--tokenizer", str(tok), "--output", str(taken)]
    assert convert_llama2c.main(argv) == 2
    _one_error_line(capsys.readouterr().err, "already holds files", "--overwrite")
    assert convert_gguf.main(["--gguf", str(ckpt), "--output", str(taken)]) == 2
    _one_error_line(capsys.readouterr().err, "already holds files")
    assert (taken / "config.json").read_text() == "{}" and len(list(taken.iterdir())) == 1
    assert convert_llama2c.main([*argv, "--overwrite"]) == 0  # asked for: written
    assert "vocab_size" in (taken / "config.json").read_text()


def test_non_finite_rl_never_exports(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_rl_cli("", _rl(tiny_models, out, "--config.actor.learning_rate=1e30",
                              "--config.critic.learning_rate=1e30", "--config.train.max_steps=2")) == 2
    _one_error_line(capsys.readouterr().err, "non-finite and skipped", "no export")
    assert not (out / "export").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/skipped_updates"] >= 1


# ---------------------------------------------------------------------------------------------------- tools


@pytest.mark.parametrize("args,needle", [(["--temperature", "-1"], "temperature must be ≥ 0"),
                                         (["--top_p", "0"], "top_p must be in (0, 1]"),
                                         (["--repetition_penalty", "0"], "repetition_penalty must be > 0"),
                                         (["--max_new_tokens", "-5"], "max_new_tokens must be ≥ 0")])
def test_generate_refuses_sampling_settings_outside_their_domain(capsys, args, needle):
    """Before: a negative temperature sampled the least likely tokens and top_p = 0 decoded greedily, both with
    exit 0; a negative token budget ended in a traceback."""
    from launch import chat, generate

    assert generate.main(["--prompt", "Once", *args]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    if args[0] != "--temperature":  # chat's temperature ≤ 0 means greedy
        assert chat.main(["--model", "/nonexistent/model", *args], stdin=io.StringIO("")) == 2
        _one_error_line(capsys.readouterr().err, needle.replace("≥ 0", "≥ 1"))


def test_pipeline_stages_from_the_command_line(tmp_path, capsys):
    """`--config.stages=sft` used to run no stage and exit 0 (a string's characters), an unknown stage too."""
    from launch import pipeline as pipeline_cli
    from saferlhf_jax.pipeline import parse_stages

    assert parse_stages("sft") == ["sft"]
    assert parse_stages(("(sft, reward)",)) == parse_stages("sft,reward") == parse_stages(("sft", "reward"))
    out = tmp_path / "job"
    assert pipeline_cli.main(["prog", "--config=configs/pipeline.py:tiny", f"--config.output_dir={out}",
                              "--config.stages=(sft,rewrad)"]) == 2
    _one_error_line(capsys.readouterr().err, "stages must be a non-empty list of", "'rewrad'")
    assert not out.exists()


def test_moderate_windows(capsys):
    from launch.moderate import windows

    prompt, response = list(range(100, 110)), list(range(1000, 1050))
    assert windows(prompt, response, 64) == [prompt + response]
    w = windows(prompt, response, 30)
    assert all(len(x) <= 30 and x[:10] == prompt for x in w)
    covered = sorted({t for x in w for t in x[10:]})
    assert covered == response and w[-1][-1] == response[-1]  # the ending is always read


def test_chat_says_when_it_cuts_a_long_message(stories_dir):
    from launch import chat

    out = io.StringIO()
    long = "the cat sat on the mat and then it ran far away " * 60  # ≈ 1,000 tokens for a 512-position model
    assert chat.main(["--model", str(stories_dir), "--max_new_tokens", "4", "--temperature", "0"],
                     stdin=io.StringIO(long + "\n/quit\n"), out=out) == 0
    text = out.getvalue()
    assert "(this model reads 512 tokens: cut your message to its last" in text


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS])
def test_a_write_that_fails_for_a_storage_reason_is_one_line(tmp_path, monkeypatch, capsys, code):
    """Metrics, an export or a report that cannot be written (a full disk, a file-size limit or quota, a directory
    made read-only — as root, permissions cannot be taken away, so the OS error is raised here by hand): one line
    naming the file and the errno, exit 2; any other OSError keeps its traceback."""
    from saferlhf_jax.training import run as run_lib

    def refuse(self, row):
        raise OSError(code, os.strerror(code), str(self.path))

    monkeypatch.setattr(run_lib.MetricsLog, "write", refuse)
    assert run_training_cli("sft", "", _sft(tmp_path / "run")) == 2
    _one_error_line(capsys.readouterr().err, f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}",
                    f"({errno.errorcode[code]})", "re-run the same command")
    monkeypatch.undo()
    assert run_training_cli("sft", "", _sft(tmp_path / "run")) == 0  # the cause gone, the same command runs


def test_a_lora_rank_above_a_layers_smaller_dimension_is_refused(tmp_path, capsys):
    """stories260K's attention kernels are 64×64 (k/v 64×32): a rank-100 adapter would train more numbers than the
    weights it adapts (it used to, without a word); refused before anything is written."""
    assert run_training_cli("sft", "", _sft(tmp_path / "run", "--config.lora.rank=100")) == 2
    _one_error_line(capsys.readouterr().err, "lora.rank=100 exceeds the smaller dimension", "use lora.rank ≤ 32")
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_never_exports_finite_garbage(tmp_path, capsys):
    """SFT at a learning rate of 1e30 for one step: finite weights of ~1e30 (the non-finite guard does not see
    them) used to be exported with exit 0; train.max_weight_abs stops the export with one line."""
    assert run_training_cli("sft", "", _sft(tmp_path / "run", "--config.train.learning_rate=1e30",
                                            "--config.train.max_steps=1")) == 2
    _one_error_line(capsys.readouterr().err, "beyond train.max_weight_abs=10000", "nothing was exported")
    assert not (tmp_path / "run" / "export").exists()
