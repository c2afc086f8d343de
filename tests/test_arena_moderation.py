"""Arena tables and files; moderation metrics by hand; moderation training overfits; the moderate CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from launch import arena as arena_cli
from launch import moderate as moderate_cli
from launch import moderation as moderation_cli
from saferlhf_jax import data as data_lib
from saferlhf_jax import models
from saferlhf_jax.algorithms import moderation
from saferlhf_jax.evaluation.arena import arena_tables

transformers = pytest.importorskip("transformers")


def test_arena_tables_by_hand():
    red_r, red_c = [0.0, 1.0, 2.0, 0.5, 3.0], [-1.0, 0.5, -0.2, 0.0, 2.0]
    blue_r, blue_c = [1.0, 1.0, 1.0, 0.7, 4.0], [0.1, -0.3, -1.0, 0.2, 0.0]
    t = arena_tables(red_r, red_c, blue_r, blue_c)
    # better: [T, F (tie), F, T, T]; blue safe: [F, T, T, F, T]
    assert t["counts"] == {"better_and_safe": 1, "better_but_unsafe": 2, "worse_but_safe": 2, "worse_and_unsafe": 0}
    # red safe: [T, F, T, T, F]
    assert t["table"]["red_safe/blue_safe"] == {"count": 1, "blue_win_rate": 0.0}
    assert t["table"]["red_safe/blue_unsafe"] == {"count": 2, "blue_win_rate": 1.0}
    assert t["table"]["red_unsafe/blue_safe"] == {"count": 2, "blue_win_rate": 0.5}
    assert t["table"]["red_unsafe/blue_unsafe"]["count"] == 0
    assert math.isnan(t["table"]["red_unsafe/blue_unsafe"]["blue_win_rate"])
    assert t["blue_win_rate"] == 0.6 and t["red"]["safe_rate"] == 0.6


@pytest.fixture(scope="module")
def policy_and_scorers(tmp_path_factory, stories_dir):
    root = tmp_path_factory.mktemp("arena_models")
    tok = transformers.AutoTokenizer.from_pretrained(stories_dir)
    data_lib.prepare_tokenizer(tok)
    for name, kind, rng in (("red", "causal_lm", 0), ("blue", "causal_lm", 1), ("rm", "reward", 2),
                            ("cm", "cost", 3)):
        if kind == "causal_lm":
            m = models.load_causal_lm(stories_dir)
            m, params = models.resize_token_embeddings(m, m.params, len(tok))
            if name == "blue":  # a perturbed policy so the two differ
                params["lm_head" if "lm_head" in params else "model"]["embed_tokens"]["embedding"] *= 1.2
        else:
            m = models.load_score_model(stories_dir, score_type=kind, rng=rng)
            m, params = models.resize_token_embeddings(m, m.params, len(tok))
        models.save_pretrained(m, params, root / name)
        tok.save_pretrained(root / name)
    return root


def test_arena_writes_consistent_outputs(policy_and_scorers, tmp_path):
    r = policy_and_scorers
    rc = arena_cli.main(["--red", str(r / "red"), "--blue", str(r / "blue"), "--reward", str(r / "rm"),
                         "--cost", str(r / "cm"), "--datasets", "PKU-SafeRLHF/test", "--data_source", "embedded",
                         "--output_dir", str(tmp_path),
                         "--max_length", "256", "--batch_size", "8"])
    assert rc == 0
    for f in ("table.csv", "summary.json", "summary.md", "reward_distribution.png", "cost_distribution.png"):
        assert (tmp_path / f).is_file(), f
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prompts"] == 16 and sum(summary["counts"].values()) == 16
    with open(tmp_path / "table.csv") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert header == ["Prompt", "red", "Reward", "Cost", "blue", "Reward", "Cost"]
    assert len(rows) == 16 and all(row[0].endswith("ASSISTANT:") for row in rows)
    red_r, red_c = np.array([float(x[2]) for x in rows]), np.array([float(x[3]) for x in rows])
    blue_r, blue_c = np.array([float(x[5]) for x in rows]), np.array([float(x[6]) for x in rows])
    assert summary["blue_win_rate"] == pytest.approx(np.mean(blue_r > red_r))
    assert summary["counts"]["better_and_safe"] == int(np.sum((blue_r > red_r) & (blue_c <= 0)))
    cell = (red_c <= 0) & (blue_c > 0)
    expected = float(np.mean((blue_r > red_r)[cell])) if cell.any() else float("nan")
    got = summary["table"]["red_safe/blue_unsafe"]["blue_win_rate"]
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    assert summary["red"]["reward_mean"] == pytest.approx(red_r.mean(), abs=1e-5)
    assert "| better |" in (tmp_path / "summary.md").read_text()


def test_moderation_metrics_by_hand():
    pred_u = np.array([1, 1, 0, 0, 1, 0], bool)
    true_u = np.array([1, 0, 1, 0, 1, 0], bool)
    cats = np.zeros((6, 19), bool)
    cats[0, 3] = cats[2, 5] = cats[4, 3] = True
    pred_c = cats.copy()
    pred_c[2, 5] = False          # a miss on an unsafe row
    pred_c[1, 7] = True           # a false category on a safe row
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    sev = np.array([2, 0, 3, 0, 1, -1])
    pred_s = np.array([2, 1, 3, 0, 2, 0])
    m = moderation.moderation_metrics(pred_u, true_u, pred_c, cats, valid, pred_s, sev)
    # tp=2 (0,4), fp=1 (1), fn=1 (2), tn=2 (3,5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert m["fpr"] == pytest.approx(1 / 3)
    assert m["severity_accuracy"] == pytest.approx(3 / 5)         # rows 0, 2, 3 right; row 5 unlabelled
    assert m["severity_accuracy_unsafe"] == pytest.approx(2 / 3)  # unsafe rows 0, 2, 4 → 0 and 2 right
    assert m["category_exact_match"] == pytest.approx(3 / 5)      # rows 0, 3, 4 exact among 5 labelled
    assert m["category_exact_match_unsafe"] == pytest.approx(2 / 3)
    assert m["category_f1"]["Discriminatory Behavior"] == pytest.approx(0.0)
    assert m["category_f1"]["Endangering Public Health"] == pytest.approx(1.0)  # index 3: 2 tp
    assert m["severity_confusion"][3][3] == 1 and m["severity_confusion"][0][1] == 1
    # edge cases: no positives at all, every category false
    none = moderation.moderation_metrics(np.zeros(4, bool), np.zeros(4, bool), np.zeros((4, 19), bool),
                                         np.zeros((4, 19), bool), np.ones(4, bool), np.zeros(4, int),
                                         np.zeros(4, int))
    assert none["accuracy"] == 1.0 and none["f1"] == 0.0 and none["fpr"] == 0.0
    assert math.isnan(none["recall"]) and math.isnan(none["severity_accuracy_unsafe"])
    assert none["category_exact_match"] == 1.0


def test_moderation_overfits_32_responses_and_moderate_cli(tmp_path, capsys):
    fast = ["--config.data.max_length=192", "--config.data.buckets=(192,)", "--config.logging.progress=False",
            "--config.logging.tensorboard=False", "--config.mesh.fsdp=1", "--config.train.lr_warmup_ratio=0.0"]
    rc = moderation_cli.main([
        "prog", "--config=configs/moderation.py:tiny", f"--config.output_dir={tmp_path}", *fast,
        "--config.train_datasets=PKU-SafeRLHF/train:16/-1", "--config.eval_datasets=PKU-SafeRLHF/train:16/-1",
        "--config.train.max_steps=60", "--config.train.learning_rate=3e-3",
        "--config.train.lr_scheduler_type=constant", "--config.train.eval_every=60"])
    assert rc == 0
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval/n" in line]
    final = evals[-1]
    assert final["eval/n"] == 32 and final["eval/accuracy"] == 1.0, final
    assert final["eval/severity_accuracy"] >= 0.9
    report = json.loads((tmp_path / "moderation_metrics.json").read_text())  # the launcher's final evaluation
    assert report["accuracy"] == 1.0 and (tmp_path / "severity_confusion.png").is_file()
    assert "moderation: {" in capsys.readouterr().out
    assert moderate_cli.main(["--model", str(tmp_path / "export"), "--prompt", "How do I bake bread?",
                              "Mix flour and water, then bake it.", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert set(out) >= {"unsafe", "p_unsafe", "categories", "severity"} and 0.0 <= out["p_unsafe"] <= 1.0
    import io

    lines = io.StringIO('{"prompt": "q", "response": "a"}\n{"response": "b"}\n')
    assert moderate_cli.main(["--model", str(tmp_path / "export")], stdin=lines) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert moderate_cli.main(["--model", str(tmp_path / "export")], stdin=io.StringIO("not json\n")) == 2
    # nothing to moderate, an empty answer: one line each; a long answer is read in windows and says so
    assert moderate_cli.main(["--model", str(tmp_path / "export")], stdin=io.StringIO("")) == 2
    assert "nothing to moderate" in capsys.readouterr().err
    assert moderate_cli.main(["--model", str(tmp_path / "export"), "--prompt", "q", "   "]) == 2
    assert "the response is empty" in capsys.readouterr().err
    long = "Mix flour and water. " * 80 + "Then add the poison to the bread."
    assert moderate_cli.main(["--model", str(tmp_path / "export"), "--prompt", "q", long, "--max_length", "128",
                              "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["windows"] > 1 and out["tokens"] > 128
    if not out["unsafe"]:
        assert out["categories"] == {} and out["severity"] == "safe"  # a safe verdict lists no harm


def test_a_moderation_verdict_is_consistent_whatever_the_heads_say():
    """The unsafe head fires while the severity head's argmax is "safe" (the heads are trained apart): the verdict
    says the most probable unsafe level, never "UNSAFE, severity=safe"; below the threshold it is safe, with no
    categories, whatever the severity head says."""
    from saferlhf_jax.algorithms import moderation

    cats = np.full(19, 0.1)
    cats[[3, 7]] = [0.6, 0.9]
    v = moderation.verdict(0.8, cats, [0.55, 0.1, 0.3, 0.05])
    assert v["unsafe"] and v["severity"] == "moderate" and list(v["categories"]) == [
        moderation.PKU_HARM_CATEGORIES[7], moderation.PKU_HARM_CATEGORIES[3]]
    assert v["severity_probs"] == [0.55, 0.1, 0.3, 0.05]  # what each head said stays in the output
    safe = moderation.verdict(0.3, cats, [0.05, 0.05, 0.1, 0.8])
    assert not safe["unsafe"] and safe["severity"] == "safe" and safe["categories"] == {}
    assert moderation.verdict(0.5, cats, [0.1, 0.2, 0.3, 0.4], threshold=0.5)["severity"] == "severe"
