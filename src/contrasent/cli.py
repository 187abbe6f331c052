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

from jsonargparse import ArgumentParser, set_parsing_settings

from contrasent.cli_tools import ExportArgs, IndexBuildArgs, MergeArgs, SearchArgs
from contrasent.errors import UserError

Pooling = Literal["cls", "cls_before_pooler", "mean", "max", "avg_top2", "avg_first_last"]


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

    model: str
    pooling: Pooling | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    device: str | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 64
    backend: Literal["torch", "onnx"] = "torch"
    file_name: str | None = None

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
    """Embed a text file (one text a line, .txt or .txt.gz): resumable chunks, shards.

    Args:
        input: Input text file; every line (empty ones too) becomes one row.
        output: Output file: .npy (float32 matrix), .parquet (id, [text,] embedding) or .jsonl
            (DeCLUTR's {"embeddings": [...]} a line); rows in input order.
        errors: Invalid UTF-8: "strict" stops with the line number; "replace" substitutes U+FFFD
            and reports how many lines were affected.
        shard: I/N: embed only the I-th (from 0) of N contiguous parts of the file into
            OUTPUT.shard-I-of-N/; join them with `contrasent embed merge --output OUTPUT`.
            Under torchrun / accelerate launch each process takes shard RANK/WORLD_SIZE and
            rank 0 merges.
        chunk_lines: Lines per chunk: a killed run re-run with the same command resumes after
            the last complete chunk.
        with_text: Add the text to .parquet / .jsonl rows.
    """

    input: str = ""
    output: str = ""
    errors: Literal["strict", "replace"] = "strict"
    shard: str | None = None
    chunk_lines: int = 20000
    with_text: bool = False


@dataclass
class IndexBuildCmd(IndexBuildArgs, ModelArgs):
    __doc__ = IndexBuildArgs.__doc__


@dataclass
class ExportCmd(ExportArgs, ModelArgs):
    __doc__ = ExportArgs.__doc__


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
    from contrasent.cli_tools import run_embed

    run_embed(args)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-weight load/save bars are noise on a CLI


def _run_train(cfg) -> None:
    from contrasent.eval.sts import format_table
    from contrasent.train.loop import train

    _quiet_transformers()
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate: one summary only
        return
    for label, record in (("before training", result.first_eval), ("after", result.last_eval)):
        if record:
            step = record["step"]
            print(
                f"\nSTS ({cfg.eval.mode}) {label} (step {step}):\n{format_table(record['results'])}"
            )
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
    )
    sub = parser.add_subcommands(dest="command")
    for name, cls, help_ in (
        ("eval", EvalArgs, "Evaluate on STS (prints the table, writes JSON)."),
        ("embed", EmbedArgs, "Embed a text file (.npy/.parquet/.jsonl), resumable, sharded."),
        ("embed_merge", MergeArgs, "`contrasent embed merge --output OUT`: join finished shards."),
        ("search", SearchArgs, "Search an index: QUERY... or --queries FILE."),
        ("export", ExportCmd, "`contrasent export MODEL --output DIR --format onnx`."),
    ):
        sub.add_subcommand(name, _class_parser(cls), help=help_)
    sub.add_subcommand("train", _train_parser(), help="Train from a YAML recipe with overrides.")
    index = ArgumentParser(description="Search indexes.")
    sub.add_subcommand("index", index, help="`contrasent index build ...`: build a search index.")
    index_sub = index.add_subcommands(
        dest="action"
    )  # added after its parent, as jsonargparse wants
    index_sub.add_subcommand(
        "build", _class_parser(IndexBuildCmd), help=IndexBuildArgs.__doc__.split("\n")[0]
    )
    return parser


def _class_parser(cls) -> ArgumentParser:
    p = ArgumentParser(description=(cls.__doc__ or "").split("\n")[0])
    p.add_argument("--config", action="config", help="YAML file with these options.")
    p.add_class_arguments(cls, None, as_group=False)
    if cls is SearchArgs:
        p.add_argument("query", nargs="*", default=[], help="Query texts.")
    return p


def _train_parser() -> ArgumentParser:
    from contrasent.train.config import TrainConfig

    p = ArgumentParser(description="Train an encoder from a YAML recipe (configs/*.yaml).")
    # The recipe is given positionally (`contrasent train RECIPE.yaml`); main() turns it into
    # --config, which jsonargparse applies before the --key value overrides that follow it.
    p.add_argument("--config", action="config", help="YAML recipe (also accepted positionally).")
    p.add_class_arguments(TrainConfig, None, as_group=False)
    return p


def _parse(argv: list[str]) -> Any:
    """Parse a whole command line (``--data-dir`` spellings accepted, ``train RECIPE`` turned
    into ``train --config RECIPE``) and instantiate its dataclass sections."""
    argv = [_underscore_option(a) for a in argv]
    if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-"):
        argv[1:2] = ["--config", argv[1]]
    if len(argv) >= 2 and argv[0] == "export" and not argv[1].startswith("-"):
        argv[1:2] = ["--model", argv[1]]  # `contrasent export MODEL --output DIR`
    if argv[:2] == ["embed", "merge"]:
        argv[:2] = ["embed_merge"]
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
    init = _parse(list(sys.argv[1:] if argv is None else argv))
    command = init.command
    try:
        if command == "eval":
            _run_eval(_build(EvalArgs, init.eval))
        elif command == "embed":
            _run_embed(_build(EmbedArgs, init.embed))
        elif command == "embed_merge":
            from contrasent.cli_tools import run_merge

            command = "embed merge"
            run_merge(_build(MergeArgs, init.embed_merge))
        elif command == "index":
            from contrasent.cli_tools import run_index_build

            command = "index build"
            run_index_build(_build(IndexBuildCmd, init.index.build))
        elif command == "search":
            from contrasent.cli_tools import run_search

            run_search(_build(SearchArgs, init.search), list(init.search.query))
        elif command == "export":
            from contrasent.cli_tools import run_export

            run_export(_build(ExportCmd, init.export))
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
