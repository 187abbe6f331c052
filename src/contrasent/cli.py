"""The `contrasent` command line.

Each subcommand is a dataclass of options (:data:`COMMANDS`); `contrasent.cliparse` fills it from
`--config FILE.yaml` (and `train`'s positional recipe) plus `--key value` overrides. Every check
that needs no model runs first; a user mistake prints ONE line naming the problem (and the recipe
file:line it came from) and exits with status 2, never a traceback or a usage dump.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrasent.errors import UserError

Pooling = Literal[
    "cls", "cls_before_pooler", "mean", "max", "avg_top2", "avg_first_last", "avg_embeddings_last"
]  # encoder.POOLINGS (spelled out: importing the encoder would load torch for --help)


@dataclass
class ModelArgs:
    """Which encoder to load.

    Args:
        model: Hugging Face hub id, local model path, or sentence-transformers directory.
        pooling: Pooling over token states; default: the directory's own (ST) or mean.
        normalize: L2-normalise embeddings; default: the directory's own (ST) or off.
        max_seq_length: Truncate inputs to this many tokens; default: the model's.
        device: "cpu", "cuda", "cuda:1", ...; default: CUDA when available, else CPU.
        precision: Inference precision: fp16/bf16 only on GPU.
        batch_size: Sentences per forward pass.
        backend: "onnx" runs a folder written by `contrasent export` with ONNX Runtime.
        file_name: ONNX file of that folder (e.g. model_qint8_avx512_vnni.onnx); default
            model.onnx.
    """

    model: str = ""
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    device: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 64
    backend: Literal["torch", "onnx"] = "torch"
    file_name: str | None = None

    def validate(self) -> None:
        """Every check that needs no model (so a mistake costs no model-loading time)."""
        if not self.model:
            raise UserError("--model is required (a hub id, a model folder or an ST folder)")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise UserError(f"--max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.backend == "onnx":
            from contrasent.onnx_backend import check_export

            check_export(self.model, self.file_name, self.pooling)
            if self.precision != "fp32":
                raise UserError(f"--precision {self.precision}: --backend onnx runs fp32 or int8")
        elif self.file_name is not None:
            raise UserError("--file_name picks an ONNX file: it needs --backend onnx")

    def load(self):
        from contrasent.encoder import Encoder

        _quiet_transformers()
        return Encoder.from_pretrained(
            self.model,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            device=self.device,
            backend=self.backend,
            file_name=self.file_name,
        )


def check_output_file(path: str, option: str) -> None:
    """An output file can be written there: not a folder, its folder exists or can be made."""
    p = Path(path)
    if p.is_dir():
        raise UserError(
            f"{option} {path} is a folder; give a file name (e.g. {p / 'results.json'})"
        )
    parent = next(a for a in p.absolute().parents if a.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent}")


def check_output_folder(path: str, option: str) -> None:
    """An output folder can be made or written there: not a file, its parent writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder (it is created if missing)")
    parent = next(a for a in [p.absolute(), *p.absolute().parents] if a.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent}")


@dataclass
class EvalArgs(ModelArgs):
    """Evaluate an encoder on STS (Spearman x100) and SentEval transfer tasks (accuracy x100).

    Args:
        tasks: "sts" (default: STS12-16, STS-B, SICK-R), "transfer" (MR, CR, SUBJ, MPQA, SST2,
            TREC, MRPC), "full" (both), or comma-separated names: sts12..sts16, stsb, sickr, MR,
            CR, SUBJ, MPQA, SST2, TREC, MRPC, SICKEntailment.
        mode: STS: "test" every task, "dev" STS-B dev + SICK-R trial only ("fasttest" = test).
            Transfer (SimCSE's settings): "test" 10-fold Adam classifier; "fasttest" 5-fold
            RMSprop classifier, test accuracy; "dev" the fasttest classifier, dev accuracy.
        data_dir: Folder in SentEval's data/downstream layout; default: $CONTRASENT_DATA, else
            ../shared/data/senteval.
        output: Write every number to this JSON file.
        plots: Write PNG figures to this folder: gold vs cosine per STS task and the similarity
            distribution by gold score on STS-B.
    """

    tasks: str | None = None
    mode: Literal["dev", "test", "fasttest"] = "test"
    data_dir: str | None = None
    output: str | None = None
    plots: str | None = None

    def validate(self) -> None:
        from contrasent.eval.sts import load_task, resolve_data_dir, resolve_tasks
        from contrasent.eval.suite import check_tasks
        from contrasent.eval.transfer import resolve_transfer_tasks
        from contrasent.eval.transfer_data import load_transfer_task

        super().validate()
        if self.output:
            check_output_file(self.output, "--output")
        if self.plots:
            check_output_folder(self.plots, "--plots")
        sts_names, transfer_names = check_tasks(self.tasks, self.mode, self.data_dir)
        root = resolve_data_dir(self.data_dir)
        sts_mode = "dev" if self.mode == "dev" else "test"
        for task in resolve_tasks(sts_names, sts_mode) if sts_names else ():
            load_task(root, task, sts_mode)  # a missing or malformed file fails now
        for task in resolve_transfer_tasks(transfer_names) if transfer_names else ():
            load_transfer_task(root, task)


@dataclass
class ReportArgs:
    """Build RUN_DIR/report/report.html (+ PNGs) from a training run folder.

    Args:
        run_dir: The run's output_dir (config.json, metrics.jsonl, checkpoints/, final/).
        checkpoints: Embed STS-B dev with every checkpoint's encoder for the alignment /
            uniformity trajectory, instead of reading the numbers logged in metrics.jsonl.
        data_dir: STS data for --checkpoints; default: the recipe's eval.data_dir, else
            $CONTRASENT_DATA, else ../shared/data/senteval.
    """

    run_dir: str = ""
    checkpoints: bool = False
    data_dir: str | None = None

    def validate(self) -> None:
        from contrasent.report import check_run_dir

        if not self.run_dir:
            raise UserError("report needs a run folder: contrasent report RUN_DIR")
        check_run_dir(self.run_dir)
        check_output_folder(str(Path(self.run_dir) / "report"), "report folder")
        if self.checkpoints and self.data_dir:  # else the recipe's, found by build_report
            from contrasent.eval.sts import read_stsb, resolve_data_dir

            read_stsb(resolve_data_dir(self.data_dir), "dev")


def _run_eval(args: EvalArgs) -> None:
    import time

    from contrasent.eval.sts import write_results
    from contrasent.eval.suite import evaluate, format_tables

    encoder = args.load()

    def encode(texts: list[str]):
        return encoder.encode(texts, batch_size=args.batch_size, precision=args.precision)

    start = time.perf_counter()
    results, scores = evaluate(encode, args.tasks, args.mode, args.data_dir, bars=True)
    results["model"] = args.model
    results["encoder"] = encoder.config_dict()
    results["time_s"] = round(time.perf_counter() - start, 2)
    print(format_tables(results))
    print(f"evaluated in {results['time_s']:.1f}s")
    if args.output:
        write_results(results, args.output)
        print(f"results written to {args.output}")
    if args.plots:
        from contrasent.eval.plots import eval_plots

        written = eval_plots(results, scores, args.plots)
        print(f"{len(written)} plots written to {args.plots}")


def _run_report(args: ReportArgs) -> None:
    from contrasent.report import build_report

    path = build_report(args.run_dir, from_checkpoints=args.checkpoints, data_dir=args.data_dir)
    print(f"report written to {path}")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-weight load/save bars are noise on a CLI
    hf_logging.set_verbosity_error()


def _check_train(cfg: Any) -> None:
    cfg.validate()
    for _, stage in _stages(cfg):
        stage.data.check_paths()  # a typo in a data path fails before the model loads
        if stage.eval.every_steps or stage.eval.at_end or stage.eval.at_start:
            from contrasent.eval.sts import resolve_data_dir

            resolve_data_dir(stage.eval.data_dir)


def _stages(cfg: Any) -> list:
    from contrasent.train.config import stage_configs

    return stage_configs(cfg)


def _run_train(cfg: Any) -> None:
    from contrasent.eval.sts import format_rows, table_caption
    from contrasent.train.loop import train

    _quiet_transformers()
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate: one summary only
        return
    rows = []
    if result.first_eval:
        rows.append((f"before (step {result.first_eval['step']})", result.first_eval["results"]))
    for folder, stage in result.stages or [("", result)]:
        if stage.last_eval:
            where = f"{folder}, " if folder else ""
            rows.append(
                (f"after ({where}step {stage.last_eval['step']})", stage.last_eval["results"])
            )
    if rows:
        print(f"\n{table_caption(rows[-1][1])}\n{format_rows(rows)}")
        _print_diagnostics(result)
    if result.last_train:  # every logged part and count (e.g. documents skipped as too short)
        skip = ("step", "kind", "lr", "grad_norm", "sentences_per_s", "epoch")
        numbers = {k: v for k, v in result.last_train.items() if k not in skip and v is not None}
        text = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        print(f"last training record (step {result.last_train['step']}): {text}")
    if result.best_metric is not None:
        print(f"best {cfg.eval.metric} = {result.best_metric:.2f} at step {result.best_step}")
    print(
        f"final model: {result.final_dir}"
        + (f"  best: {result.best_dir}" if result.best_dir else "")
    )
    for _, run in result.stages or [("", result)]:
        _write_report(run.output_dir)


def _write_report(run_dir: Any) -> None:
    """The run's report.html; a failure is reported (the run itself succeeded), not raised."""
    from contrasent.report import build_report

    try:
        print(f"report: {build_report(run_dir)}")
    except Exception as exc:  # noqa: BLE001 - the trained model is saved; say how to retry
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"report not written ({first}); retry with: contrasent report {run_dir}")


def _print_diagnostics(result: Any) -> None:
    """Alignment / uniformity (STS-B dev) before and after training, beside the STS table."""
    records = [("before", result.first_eval)]
    records += [(f"after {folder}".strip(), st.last_eval) for folder, st in result.stages or []]
    if not result.stages:
        records.append(("after", result.last_eval))
    for label, record in records:
        if record and record.get("alignment") is not None:
            print(
                f"{label} (step {record['step']}): alignment {record['alignment']:.4f}  "
                f"uniformity {record['uniformity']:.4f}  (STS-B dev)"
            )


# ----------------------------------------------------------------------------- commands


@dataclass
class Command:
    """A subcommand: its options dataclass, what runs it, and how its arguments are read."""

    options: Callable[[], type]
    run: Callable[[Any], None]
    summary: str
    positional: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    recipe_first: bool = False
    check: Callable[[Any], None] = lambda args: args.validate()


def _train_config() -> type:
    from contrasent.train.config import TrainConfig

    return TrainConfig


def _tools(name: str) -> Callable[[], type]:
    """An options class of `contrasent.cli_tools`, imported on first use (it imports this)."""

    def options() -> type:
        from contrasent import cli_tools

        return getattr(cli_tools, name)

    return options


def _tools_run(name: str) -> Callable[[Any], None]:
    def run(args: Any) -> None:
        from contrasent import cli_tools

        getattr(cli_tools, name)(args)

    return run


COMMANDS: dict[str, Command] = {
    "eval": Command(
        lambda: EvalArgs,
        _run_eval,
        "Evaluate on STS / SentEval transfer tasks (prints tables, writes JSON, plots).",
    ),
    "report": Command(
        lambda: ReportArgs,
        _run_report,
        "Build report.html (curves, diagnostics, tables) from a training run folder.",
        positional=("run_dir",),
    ),
    "train": Command(
        _train_config,
        _run_train,
        "Train from a YAML recipe with overrides (contrasent train configs/quickstart-cpu.yaml).",
        aliases={"data_dir": "eval.data_dir"},
        recipe_first=True,
        check=_check_train,
    ),
    # ---- embed (resumable, sharded), search and export: options and runners in cli_tools.py
    "embed": Command(
        _tools("EmbedArgs"),
        _tools_run("run_embed"),
        "Embed a text file into .npy / .parquet / .jsonl (resumable chunks, --shard I/N).",
    ),
    "embed merge": Command(
        _tools("MergeArgs"), _tools_run("run_merge"), "Join the shards of `embed --shard I/N`."
    ),
    "index build": Command(
        _tools("IndexBuildArgs"),
        _tools_run("run_index_build"),
        "Build a search index from a corpus file (one text a line).",
    ),
    "search": Command(
        _tools("SearchArgs"),
        _tools_run("run_search"),
        "Search an index: QUERY... or --queries FILE (table, or --output hits.jsonl).",
        positional=("query",),
    ),
    "export": Command(
        _tools("ExportArgs"),
        _tools_run("run_export"),
        "Export MODEL to ONNX (--output DIR --format onnx [--quantize int8]).",
        positional=("model",),
    ),
}


def _top_help() -> str:
    from contrasent import __version__

    lines = [f"contrasent {__version__}: train and evaluate sentence encoders", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "contrasent COMMAND --help for a command's options; contrasent --version"]
    return "\n".join(lines)


def _command_help(name: str, topic: str | None) -> str:
    from contrasent import cli_help

    cmd = COMMANDS[name]
    text = cli_help.render(name, cmd.options(), topic)
    if cmd.positional:  # search QUERY..., export MODEL
        words = " ".join(f"{p.upper()}..." if p == "query" else p.upper() for p in cmd.positional)
        text = text.replace(f"contrasent {name} [", f"contrasent {name} {words} [", 1)
    return text


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `contrasent ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("CONTRASENT_LOG", "INFO"), format="%(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("--version", "-V"):
        from contrasent import __version__

        print(f"contrasent {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands: embed merge, index build
        name, rest = f"{name} {rest[0]}", rest[1:]
    words = [c.split(" ", 1)[1] for c in COMMANDS if c.startswith(f"{name} ")]
    if name not in COMMANDS and words:  # `contrasent index` without (or with a wrong) action
        print(f"contrasent {name}: error: give an action: {', '.join(f'{name} {w}' for w in words)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if name not in COMMANDS:
        from contrasent.options import suggest

        print(
            f"contrasent: error: unknown command {name!r}{suggest(name, list(COMMANDS))}; "
            f"commands: {', '.join(COMMANDS)} (contrasent --help)",
            file=sys.stderr,
        )
        return 2
    locations: dict[str, str] = {}
    try:
        if "--help" in rest or "-h" in rest:
            flag = rest.index("--help") if "--help" in rest else rest.index("-h")
            topic = rest[flag + 1] if flag + 1 < len(rest) else None
            print(_command_help(name, topic))
            return 0
        if name == "train" and "--objective.help" in rest:
            print(_objective_help(rest))
            return 0
        return _execute(name, rest, locations)
    except UserError as exc:
        from contrasent.cliparse import locate

        print(f"contrasent {name}: error: {locate(exc, locations)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"contrasent {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from contrasent.train.loop import TrainingInterrupted

        if not isinstance(exc, TrainingInterrupted):
            raise
        print(f"contrasent train: {exc}\nresume with: {_resume_command(argv)}", file=sys.stderr)
        return exc.exit_code


def _execute(name: str, rest: list[str], locations: dict[str, str]) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from contrasent.cliparse import parse_args

    cmd = COMMANDS[name]
    args, found = parse_args(
        cmd.options(),
        rest,
        positional=cmd.positional,
        aliases=cmd.aliases,
        recipe_first=cmd.recipe_first,
    )
    locations.update(found)
    cmd.check(args)
    with logging_redirect_tqdm():  # log lines above the progress bar, not through it
        cmd.run(args)
    return 0


def parse_train_config(argv: list[str]):
    """`contrasent train` arguments (recipe path first, then overrides) -> a validated TrainConfig."""
    from contrasent.cliparse import parse_args

    cmd = COMMANDS["train"]
    cfg, locations = parse_args(cmd.options(), argv, aliases=cmd.aliases, recipe_first=True)
    _overrides_reach_stages(cfg, locations)
    cfg.validate()
    return cfg


#: sections whose command-line options also apply inside every stage of a staged recipe
#: (objective and data stay each stage's own: they differ between stages by design)
STAGED_OVERRIDES = ("train", "eval", "checkpoint", "logging")


def _overrides_reach_stages(cfg: Any, locations: dict[str, str]) -> None:
    """A command-line option is the user's last word: in a staged recipe ``--train.max_steps 4``
    caps every stage, over a stage's own ``train: {max_steps: 40}``."""
    if not cfg.stages:
        return
    for dotted, where in locations.items():
        section, *keys = dotted.split(".")
        if not where.startswith("--") or section not in STAGED_OVERRIDES or not keys:
            continue
        value = getattr(cfg, section)
        for key in keys:
            value = value[key] if isinstance(value, dict) else getattr(value, key)
        for stage in cfg.stages:
            if isinstance(stage, dict) and isinstance(stage.get(section), dict):
                target = stage[section]
                for key in keys[:-1]:
                    target = target.setdefault(key, {})
                target[keys[-1]] = value


def _objective_help(argv: list[str]) -> str:
    """``train --objective.help NAME``: that objective's options."""
    from contrasent.objectives import OBJECTIVES, objective_class

    i = argv.index("--objective.help")
    if i + 1 >= len(argv):
        return f"usage: contrasent train --objective.help NAME ({', '.join(sorted(OBJECTIVES))})"
    cls = objective_class(argv[i + 1])
    doc = (cls.__doc__ or "").strip()
    options = cls.describe().split("\n", 1)[1]
    return f"{doc}\n\nbatches: {cls.batch_type.__name__}\noptions:\n{options}"


def _resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted ``train`` (argv with resume_from latest)."""
    import shlex

    out, skip = ["contrasent"], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--") and arg[2:].split("=", 1)[0].replace("-", "_") == "resume_from":
            skip = "=" not in arg and i + 1 < len(argv)
            continue
        out.append(arg)
    return shlex.join([*out, "--resume_from", "latest"])


if __name__ == "__main__":
    sys.exit(main())
