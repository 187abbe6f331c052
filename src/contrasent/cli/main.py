"""The `contrasent` command line.

Each subcommand is a dataclass of options (:data:`COMMANDS`); `contrasent.cli.parse` fills it from
`--config FILE.yaml` (and `train`'s positional recipe) plus `--key value` overrides. Every check
that needs no model runs first; a user mistake prints ONE line naming the problem (and the recipe
file:line it came from) and exits with status 2, never a traceback or a usage dump.

The table names each command's module as a string, imported only when that command runs or shows
its help: `contrasent --help` imports no command, and no command imports this module.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from contrasent.core.errors import UserError


@dataclass(frozen=True)
class Command:
    """A subcommand: where its options and runner live, and how its arguments are read."""

    module: str  # contrasent.cli.commands.<name>, imported on first use
    options_name: str  # its options dataclass
    run_name: str  # its run function
    summary: str
    positional: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    recipe_first: bool = False
    check_name: str | None = None  # its check function; default: the options' validate()
    section: str = ""  # options are this one YAML section; --NAME means --SECTION.NAME

    def section_options(self) -> type:
        """The options the user sees: the section's dataclass, or the options themselves."""
        if not self.section:
            return self.options()
        import dataclasses

        inner = {f.name: f.type for f in dataclasses.fields(self.options())}[self.section]
        return self._get(inner) if isinstance(inner, str) else inner

    def all_aliases(self) -> dict[str, str]:
        if not self.section:
            return self.aliases
        import dataclasses

        names = self.section_options()
        names = {f.name: f"{self.section}.{f.name}" for f in dataclasses.fields(names)}
        return {**names, **self.aliases}

    def options(self) -> type:
        return self._get(self.options_name)

    def run(self, args: Any) -> None:
        self._get(self.run_name)(args)

    def check(self, args: Any) -> None:
        if self.check_name is None:
            args.validate()
        else:
            self._get(self.check_name)(args)

    def _get(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)


COMMANDS: dict[str, Command] = {
    "eval": Command(
        "contrasent.cli.commands.eval",
        "EvalArgs",
        "run_eval",
        "Evaluate on STS / SentEval transfer tasks (prints tables, writes JSON, plots).",
    ),
    "report": Command(
        "contrasent.cli.commands.report",
        "ReportArgs",
        "run_report",
        "Build report.html (curves, diagnostics, tables) from a training run folder.",
        positional=("run_dir",),
    ),
    "train": Command(
        "contrasent.cli.commands.train",
        "TrainConfig",
        "run_train",
        "Train from a YAML recipe with overrides (contrasent train configs/quickstart-cpu.yaml).",
        aliases={"data_dir": "eval.data_dir"},
        recipe_first=True,
        check_name="check_train",
    ),
    "compare": Command(
        "contrasent.cli.commands.compare",
        "CompareConfig",
        "run_compare",
        "Train every method on your data under one budget and seeds; one table (mean +- std).",
        aliases={"train.max_steps": "compare.max_steps"},  # the README test's cap
        recipe_first=True,
        section="compare",
        check_name="check_compare",
    ),
    "embed": Command(
        "contrasent.cli.commands.embed",
        "EmbedArgs",
        "run_embed",
        "Embed a text file into .npy / .parquet / .jsonl (resumable chunks, --shard I/N).",
    ),
    "embed merge": Command(
        "contrasent.cli.commands.embed",
        "MergeArgs",
        "run_merge",
        "Join the shards of `embed --shard I/N`.",
    ),
    "index build": Command(
        "contrasent.cli.commands.index",
        "IndexBuildArgs",
        "run_index_build",
        "Build a search index from a corpus file (one text a line).",
    ),
    "mine": Command(
        "contrasent.cli.commands.mine",
        "MineArgs",
        "run_mine",
        "Add hard negatives to (anchor, positive) pairs (margins, rank range, --shard I/N).",
    ),
    "search": Command(
        "contrasent.cli.commands.search",
        "SearchArgs",
        "run_search",
        "Search an index: QUERY... or --queries FILE (table, or --output hits.jsonl).",
        positional=("query",),
    ),
    "export": Command(
        "contrasent.cli.commands.export",
        "ExportArgs",
        "run_export",
        "Export MODEL to ONNX (--output DIR --format onnx [--quantize int8]).",
        positional=("model",),
    ),
    "data prepare": Command(
        "contrasent.cli.commands.data_prepare",
        "PrepareConfig",
        "run_prepare",
        "Raw documents -> sentences (split, length filters, dedup, held-out, report).",
        positional=("input",),
    ),
    "env": Command(
        "contrasent.cli.commands.env",
        "EnvArgs",
        "run_env",
        "Show the CPU's bf16 support (AMX / AVX512-BF16 / none), threads, torch and CUDA.",
    ),
}


# ----------------------------------------------------------------------------- help
def _top_help() -> str:
    from contrasent.core.version import __version__

    lines = [f"contrasent {__version__}: train and evaluate sentence encoders", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "contrasent COMMAND --help for a command's options; contrasent --version"]
    return "\n".join(lines)


def _command_help(name: str, topic: str | None) -> str:
    from contrasent.cli.help import render

    cmd = COMMANDS[name]
    text = render(name, cmd.section_options(), topic)
    if cmd.positional:  # search QUERY..., export MODEL
        words = " ".join(f"{p.upper()}..." if p == "query" else p.upper() for p in cmd.positional)
        text = text.replace(f"contrasent {name} [", f"contrasent {name} {words} [", 1)
    return text


def _help(name: str, rest: list[str]) -> str | None:
    """The help that ``rest`` asks for (``--help [TOPIC]``, ``--objective.help NAME``), if any."""
    if "--help" in rest or "-h" in rest:
        flag = rest.index("--help") if "--help" in rest else rest.index("-h")
        return _command_help(name, rest[flag + 1] if flag + 1 < len(rest) else None)
    if name == "train" and "--objective.help" in rest:
        from contrasent.cli.help import objective_help

        return objective_help(rest)
    return None


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `contrasent ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("CONTRASENT_LOG", "INFO"), format="%(message)s")
    from contrasent.core.hardware import keep_freed_memory, passive_openmp

    passive_openmp()  # before anything imports torch (OpenMP reads it then)
    keep_freed_memory()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] in ("--version", "-V"):
        from contrasent.core.hardware import machine
        from contrasent.core.version import __version__

        print(f"contrasent {__version__}\n{machine().line()}")
        return 0
    name, rest = _command_name(argv)
    if name is None:
        return 2
    locations: dict[str, str] = {}
    try:
        text = _help(name, rest)
        if text is not None:
            print(text)
            return 0
        return _execute(name, rest, locations)
    except UserError as exc:
        from contrasent.cli.parse import locate

        print(f"contrasent {name}: error: {locate(exc, locations)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"contrasent {name}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path it cannot read or write (a full disk): one line
        from contrasent.core.fileio import path_error_line

        line = path_error_line(exc)
        if line is None:
            raise
        print(f"contrasent {name}: error: {line}", file=sys.stderr)
        return 2
    except Exception as exc:
        from contrasent.train.loop import TrainingInterrupted

        if not isinstance(exc, TrainingInterrupted):
            raise
        from contrasent.cli.commands.train import resume_command

        if name == "compare":  # finished runs are skipped, this one resumes: the same command
            import shlex

            again = shlex.join(["contrasent", *argv])
            print(f"contrasent compare: {exc}\nresume with: {again}", file=sys.stderr)
            return exc.exit_code
        print(f"contrasent train: {exc}\nresume with: {resume_command(argv)}", file=sys.stderr)
        return exc.exit_code


def _command_name(argv: list[str]) -> tuple[str | None, list[str]]:
    """The command and its arguments; None (the error printed) for a missing or unknown one."""
    name, rest = argv[0], argv[1:]
    if rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands: embed merge, index build
        name, rest = f"{name} {rest[0]}", rest[1:]
    words = [c.split(" ", 1)[1] for c in COMMANDS if c.startswith(f"{name} ")]
    if name not in COMMANDS and words:  # `contrasent index` without (or with a wrong) action
        print(f"contrasent {name}: error: give an action: {', '.join(f'{name} {w}' for w in words)}",
              file=sys.stderr)  # fmt: skip
        return None, rest
    if name not in COMMANDS:
        from contrasent.core.options import suggest

        print(
            f"contrasent: error: unknown command {name!r}{suggest(name, list(COMMANDS))}; "
            f"commands: {', '.join(COMMANDS)} (contrasent --help)",
            file=sys.stderr,
        )
        return None, rest
    return name, rest


def _execute(name: str, rest: list[str], locations: dict[str, str]) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from contrasent.cli.parse import parse_args

    cmd = COMMANDS[name]
    args, found = parse_args(
        cmd.options(),
        rest,
        positional=cmd.positional,
        aliases=cmd.all_aliases(),
        recipe_first=cmd.recipe_first,
    )
    locations.update(found)
    if name == "train":  # a staged recipe: command-line options reach every stage
        from contrasent.cli.commands.train import overrides_reach_stages

        overrides_reach_stages(args, found)
    cmd.check(args)
    if name not in ("env", "report", "embed merge"):  # env says it itself; the others: no model
        from contrasent.core.hardware import apply_threads

        # said once the model loads (ModelArgs.load, train): a mistake before that is one line
        apply_threads(getattr(args, "threads", None) or _train_threads(args), say=False)
    with logging_redirect_tqdm():  # log lines above the progress bar, not through it
        cmd.run(args)
    return 0


def _train_threads(args: Any) -> int | None:
    return getattr(getattr(args, "train", None), "threads", None) or None


def parse_train_config(argv: list[str]) -> Any:
    """`contrasent train` arguments (recipe path first, then overrides) -> a validated TrainConfig."""
    from contrasent.cli.commands.train import overrides_reach_stages
    from contrasent.cli.parse import parse_args

    cmd = COMMANDS["train"]
    cfg, locations = parse_args(cmd.options(), argv, aliases=cmd.aliases, recipe_first=True)
    overrides_reach_stages(cfg, locations)
    cfg.validate()
    return cfg


if __name__ == "__main__":
    sys.exit(main())
