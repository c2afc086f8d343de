"""Shared CLI plumbing: `python -m launch.<stage> --config configs/<stage>.py[:preset] [--config.key=value ...]`.

Config problems (unknown key, bad value, mesh that does not fit, bad data) are reported in one line before anything
compiles; Ctrl-C / SIGTERM saves a checkpoint and the same command resumes.
"""

from __future__ import annotations

import ast
import difflib
import errno
import importlib.util
import logging
import pathlib
import signal
import sys
import threading

from absl import flags
from ml_collections import config_dict, config_flags

LIST_KEYS = ("train_datasets", "eval_datasets", "ptx_datasets", "datasets")
REPO = pathlib.Path(__file__).resolve().parents[1]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "jax._src", "orbax", "etils", "tensorflow_datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_arg(argv: list[str], default: str) -> tuple[str, int | None]:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1], i
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1], i
    return default, None


def _string_tuple_field(cfg, key: str) -> bool:
    """Whether `key` (dotted) names a tuple-of-strings field of `cfg` (a dataset list key counts even when empty)."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            return False
        node = node[part]
    if key.rsplit(".", 1)[-1] in LIST_KEYS:
        return True
    return isinstance(node, tuple) and bool(node) and all(isinstance(e, str) for e in node)


def normalize_list_flags(argv: list[str], cfg) -> list[str]:
    """`--config.train_datasets=a:0.5,b` (or `(a:0.5,b)`, bare words) → a tuple literal that config_flags accepts,
    for the dataset lists and every other tuple-of-strings field of the base config `cfg` (`stages`,
    `lora.targets`). Without this a bare `(sft,reward)` arrived as the one string '(sft,reward)'."""
    out = []
    for arg in argv:
        key, eq, value = arg[len("--config."):].partition("=") if arg.startswith("--config.") else ("", "", "")
        if eq and _string_tuple_field(cfg, key):
            value = value.strip()
            try:
                literal = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                literal = None
            if not isinstance(literal, (tuple, list)):
                items = tuple(v.strip() for v in value.strip("()[]").split(",") if v.strip())
                arg = f"--config.{key}={items!r}"
        out.append(arg)
    return out


def refuse_to_overwrite(output, overwrite: bool = False) -> str | None:
    """The one-line reason a converter must not write into `output` (a file, or a directory that already holds
    something: a converter writes over config.json and the weights — another model's, silently), else None."""
    path = pathlib.Path(output).expanduser()
    if path.exists() and not path.is_dir():
        return f"--output {path} is a file, not a directory"
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        return f"--output {path} already holds files; choose a new directory (or pass --overwrite)"
    return None


def load_config_file(spec: str):
    path, _, preset = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file() and (REPO / path).is_file():
        file = REPO / path
    if not file.is_file():
        raise ValueError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_cfg_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(REPO))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO))
    return module.get_config(preset) if preset else module.get_config()


def check_override_keys(argv: list[str], cfg) -> None:
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node = cfg
        walked = []
        for part in key.split("."):
            if not isinstance(node, config_dict.ConfigDict) or part not in node:
                options = sorted(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
                close = difflib.get_close_matches(part, options, n=3)
                where = ".".join(walked) or "config"
                hint = f"; did you mean {', '.join(close)}?" if close else f"; {where} has: {', '.join(options)}"
                raise ValueError(f"unknown config key {key!r}{hint}")
            node = node[part]
            walked.append(part)


def parse_config(argv: list[str], default_config: str):
    """argv (program name first) → ConfigDict with overrides applied; raises ValueError with one line."""
    spec, _ = _config_arg(list(argv)[1:], default_config)
    base = load_config_file(spec)
    argv = normalize_list_flags(list(argv), base)
    check_override_keys(argv[1:], base)
    fv = flags.FlagValues()
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv = [argv[0], f"--config={spec}", *argv[1:]]
    # the override flags are discovered from `sys_argv`, so hand it our argv (not the process's)
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=False, sys_argv=argv)
    flags.DEFINE_bool("verbose", False, "debug logging", flag_values=fv)
    try:
        fv(argv)
    except flags.Error as err:
        raise ValueError(str(err).splitlines()[0]) from None
    return fv.config, fv.verbose


def run_job_cli(default_config: str, job, report, argv=None) -> int:
    """Parse the config, start multi-host if asked, run `job(cfg)` and `report(result)`; bad config, bad data, bad
    models and missing files are one-line errors (exit 2), Ctrl-C / SIGTERM saves and exits 130."""
    from saferlhf_jax.errors import ConfigError, DataError, ModelError, TrainingError, storage_failure
    from saferlhf_jax.parallel import initialize_distributed

    argv = list(sys.argv if argv is None else argv)
    try:
        cfg, verbose = parse_config(argv, default_config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging(verbose)
    initialize_distributed(cfg.get("distributed"))
    try:
        result = job(cfg)
    except (ConfigError, DataError, ModelError, TrainingError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # metrics, an export, a report: a write that failed for a storage reason
        failure = storage_failure(err)
        if failure is None:
            raise
        code, what, fix = failure
        where = err.filename or "the output directory"
        print(f"error: cannot write {where} ({errno.errorcode[code]}): {what}; {fix} and re-run the same command: "
              "it resumes from the last complete checkpoint", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    # the run has finished and written everything: a late Ctrl-C while its summary prints has nothing left to stop
    # and printed a KeyboardInterrupt traceback (exit 0); it is ignored until the summary is out
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        report(result)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return 0


def run_training_cli(stage_module: str, default_config: str, argv=None) -> int:
    """Entry point shared by launch.sft / reward / cost / dpo."""
    from saferlhf_jax.training import trainer

    def job(cfg):
        stage = importlib.import_module(f"saferlhf_jax.algorithms.{stage_module}").STAGE
        return trainer.train(stage, cfg)

    return run_job_cli(default_config, job, trainer.print_summary, argv)


def run_rl_cli(default_config: str, argv=None) -> int:
    """Entry point shared by launch.ppo / ppo_lag / ppo_reward_shaping."""
    from saferlhf_jax.algorithms import ppo_lag

    return run_job_cli(default_config, ppo_lag.run, ppo_lag.print_summary, argv)
