"""The `contrasent` command line: generated from the dataclasses below and `train.config`.

Every subcommand takes `--config FILE.yaml` (and `train` a positional recipe) plus `--key value`
overrides. A user mistake prints one line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, fields
from typing import Any, Literal

from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

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
    """

    model: str
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    device: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 64

    def load(self):
        from contrasent.encoder import Encoder

        _quiet_transformers()

        return Encoder.from_pretrained(
            self.model,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            device=self.device,
        )


@dataclass
class EvalArgs(ModelArgs):
    """Evaluate an encoder on STS12-16, STS-B and SICK-R (Spearman x100, cosine similarity).

    Args:
        tasks: Comma-separated task names or aliases: sts (all seven), sts12..sts16, stsb, sickr.
        mode: "test": every task; "dev": STS-B dev + SICK-R trial only (model selection).
        data_dir: Folder in SentEval's data/downstream layout; default: $CONTRASENT_DATA.
        output: Write every number to this JSON file.
    """

    tasks: str | None = None
    mode: Literal["dev", "test"] = "test"
    data_dir: str | None = None
    output: str | None = None


@dataclass
class EmbedArgs(ModelArgs):
    """Embed a text file (one text a line, .txt or .txt.gz) into a .npy matrix, streaming.

    Args:
        input: Input text file; every line (empty ones too) becomes one row.
        output: Output .npy file (float32, rows in input order).
        errors: Invalid UTF-8: "strict" stops with the line number; "replace" substitutes U+FFFD
            and reports how many lines were affected.
    """

    input: str = ""
    output: str = ""
    errors: Literal["strict", "replace"] = "strict"


def _run_eval(args: EvalArgs) -> None:
    from contrasent.eval.sts import evaluate_sts, format_table, write_results

    encoder = args.load()

    def encode(texts: list[str]):
        return encoder.encode(texts, batch_size=args.batch_size, precision=args.precision)

    results = evaluate_sts(encode, data_dir=args.data_dir, mode=args.mode, tasks=args.tasks)
    results["model"] = args.model
    results["encoder"] = encoder.config_dict()
    print(format_table(results))
    if args.output:
        write_results(results, args.output)
        print(f"results written to {args.output}")


def _run_embed(args: EmbedArgs) -> None:
    from contrasent.embed import embed_file

    if not args.input or not args.output:
        raise UserError("embed needs --input FILE and --output FILE.npy")
    encoder = args.load()
    summary = embed_file(
        encoder,
        args.input,
        args.output,
        batch_size=args.batch_size,
        errors=args.errors,
        precision=args.precision,
    )
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-weight load/save bars are noise on a CLI


def _run_train(cfg) -> None:
    from contrasent.eval.sts import format_rows
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
        print(f"\nSTS ({cfg.eval.mode}, Spearman x100):\n{format_rows(rows)}")
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="contrasent",
        description="Train and evaluate sentence encoders (SimCSE, 1B-pairs, ...).",
        env_prefix="CONTRASENT",
        default_env=False,
        formatter_class=_RawEpilog,  # subcommands inherit it: keeps train's epilog as written
    )
    sub = parser.add_subcommands(dest="command")
    for name, cls, help_ in (
        ("eval", EvalArgs, "Evaluate on STS (prints the table, writes JSON)."),
        ("embed", EmbedArgs, "Embed a text file into a .npy matrix."),
    ):
        p = ArgumentParser(description=(cls.__doc__ or "").split("\n")[0])
        p.add_argument("--config", action="config", help="YAML file with these options.")
        p.add_class_arguments(cls, None, as_group=False)
        sub.add_subcommand(name, p, help=help_)
    sub.add_subcommand("train", _train_parser(), help="Train from a YAML recipe with overrides.")
    return parser


def _train_parser() -> ArgumentParser:
    from contrasent.objectives import describe_objectives
    from contrasent.train.config import TrainConfig

    p = ArgumentParser(
        description="Train an encoder from a YAML recipe (configs/*.yaml).",
        epilog="objectives (objective.name) and their options (objective.<option>), with "
        "defaults; one objective's: contrasent train --objective.help NAME\n\n"
        + describe_objectives()
        + "\n\ndata kinds (data.kind): "
        + _data_kinds_help(),
        formatter_class=_RawEpilog,
    )
    # The recipe is given positionally (`contrasent train RECIPE.yaml`); main() turns it into
    # --config, which jsonargparse applies before the --key value overrides that follow it.
    p.add_argument("--config", action="config", help="YAML recipe (also accepted positionally).")
    p.add_class_arguments(TrainConfig, None, as_group=False)
    return p


class _RawEpilog(DefaultHelpFormatter):
    """jsonargparse's help formatter, with the epilog (objective options) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _data_kinds_help() -> str:
    from contrasent.data.sources import DATA_KINDS
    from contrasent.options import describe

    lines = []
    for name in sorted(DATA_KINDS):
        kind = DATA_KINDS[name]
        lines.append(f"\n  {name}: {kind.summary} -> {kind.batch_type.__name__}")
        if kind.options is not None:
            lines.append(
                "\n  options (data.options.<option>):\n" + describe(kind.options, "      ")
            )
    return "".join(lines)


def _objective_help(argv: list[str]) -> str | None:
    """``train --objective.help NAME``: that objective's options (None when not asked)."""
    if "--objective.help" not in argv:
        return None
    from contrasent.objectives import OBJECTIVES, objective_class

    i = argv.index("--objective.help")
    if i + 1 >= len(argv):
        return f"usage: contrasent train --objective.help NAME ({', '.join(sorted(OBJECTIVES))})"
    cls = objective_class(argv[i + 1])
    doc = (cls.__doc__ or "").strip()
    return f"{doc}\n\nbatches: {cls.batch_type.__name__}\noptions:\n{cls.describe().split(chr(10), 1)[1]}"


def _parse(argv: list[str]) -> Any:
    """Parse a whole command line (``--data-dir`` spellings accepted, ``train RECIPE`` turned
    into ``train --config RECIPE``) and instantiate its dataclass sections."""
    argv = [_underscore_option(a) for a in argv]
    if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-"):
        argv[1:2] = ["--config", argv[1]]
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = build_parser()
    return parser.instantiate(parser.parse_args(argv))


def parse_train_config(argv: list[str]):
    """`contrasent train` arguments (recipe path first, then overrides) -> a validated TrainConfig."""
    from contrasent.train.config import TrainConfig

    cfg = _build(TrainConfig, _parse(["train", *argv]).train)
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CONTRASENT_LOG", "INFO"), format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        try:
            text = _objective_help(argv)
        except UserError as exc:
            print(f"contrasent train: error: {exc}", file=sys.stderr)
            return 2
        if text is not None:
            print(text)
            return 0
    init = _parse(argv)
    command = init.command
    try:
        if command == "eval":
            _run_eval(_build(EvalArgs, init.eval))
        elif command == "embed":
            _run_embed(_build(EmbedArgs, init.embed))
        elif command == "train":
            from contrasent.train.config import TrainConfig

            _run_train(_build(TrainConfig, init.train))
    except UserError as exc:
        print(f"contrasent {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"contrasent {command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _underscore_option(arg: str) -> str:
    """Accept `--data-dir` as well as jsonargparse's `--data_dir` spelling."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + eq + value


def _build(cls, ns):
    """The dataclass `cls` from a parsed namespace (nested sections already instantiated)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


if __name__ == "__main__":
    sys.exit(main())
