"""`contrasent embed` (resumable, sharded) and `contrasent embed merge` (joins the shards).

The work itself is `contrasent.serve.embed`: chunk folders, resume, shards and their merge.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contrasent.cli.args import (
    ModelArgs,
    check_input_file,
    check_output_file,
    check_suffix,
    model_path,
)
from contrasent.core.errors import UserError
from contrasent.core.launch import launched_rank, launched_world, local_rank
from contrasent.serve.formats import FORMATS


@dataclass
class EmbedArgs(ModelArgs):
    """Embed a text file (one text a line) into .npy, .parquet or .jsonl; resumable, shardable.

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
        quantize: Write quantized codes to the .npy output: binary / ubinary (1 bit a dim,
            packed; sentence-transformers' "binary" is int8, "ubinary" uint8), int8 / uint8
            (256 buckets a dim between the calibration min and max, written beside the output
            as OUTPUT.ranges.npy); OUTPUT.quantization.json says how.
        quantize_ranges: int8 / uint8: calibration ranges (.npy, [2, dim]) of an earlier
            output, e.g. to quantize queries like their corpus; default: this input's own.
        keep_float: With --quantize, also keep the float32 embeddings (OUTPUT.float32.npy).
    """

    input: str = ""
    output: str = ""
    errors: Literal["strict", "replace"] = "strict"
    shard: str | None = None
    chunk_lines: int = 20000
    with_text: bool = False
    quantize: Literal["binary", "ubinary", "int8", "uint8"] | None = None
    quantize_ranges: str | None = None
    keep_float: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.input or not self.output:
            raise UserError("embed needs --input FILE and --output FILE (.npy, .parquet or .jsonl)")
        check_input_file(self.input, "--input")
        check_output_file(self.output, "--output")
        check_suffix(self.output, "--output", tuple(FORMATS))
        if self.with_text and Path(self.output).suffix.lower() == ".npy":
            raise UserError("--with_text needs a .parquet or .jsonl --output (.npy holds numbers)")
        if self.chunk_lines < 1:
            raise UserError(f"--chunk_lines must be >= 1, got {self.chunk_lines}")
        from contrasent.core.options import parse_shard

        parse_shard(self.shard)
        self._check_quantize()

    def _check_quantize(self) -> None:
        if self.quantize is None:
            if self.quantize_ranges or self.keep_float:
                raise UserError("--quantize_ranges and --keep_float go with --quantize")
            return
        if Path(self.output).suffix.lower() != ".npy":
            raise UserError(f"--quantize writes a .npy of codes; --output {self.output} is not")
        if self.shard is not None:
            raise UserError("--quantize needs the whole file (ranges over every row): no --shard")
        if self.quantize_ranges is not None:
            if self.quantize not in ("int8", "uint8"):
                raise UserError(f"--quantize_ranges is for int8 / uint8, not {self.quantize}")
            check_input_file(self.quantize_ranges, "--quantize_ranges")


@dataclass
class MergeArgs:
    """Join the finished shards of `contrasent embed --shard I/N --output OUT` into OUT.

    Args:
        output: The --output every shard was given (.npy, .parquet or .jsonl).
        keep_chunks: Keep the shard chunk folders after a successful merge.
    """

    output: str = ""
    keep_chunks: bool = False

    def validate(self) -> None:
        if not self.output:
            raise UserError("embed merge needs --output FILE (the --output the shards were given)")
        check_output_file(self.output, "--output")
        check_suffix(self.output, "--output", tuple(FORMATS))


def distributed_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun / accelerate launch with more than one process."""
    world = launched_world()
    return (launched_rank(), world) if world > 1 else None


def run_embed(args: EmbedArgs) -> None:
    from contrasent.core.options import parse_shard
    from contrasent.serve.embed import embed_file, merge_shards

    shard = parse_shard(args.shard)
    launch = distributed_shard() if shard is None else None  # an explicit --shard wins
    if launch and args.device is None:
        import torch

        if torch.cuda.is_available():  # one GPU per process
            args.device = f"cuda:{local_rank()}"
    encoder = args.load()
    target = _float_target(args.output) if args.quantize else args.output
    summary = embed_file(
        encoder,
        args.input,
        target,
        batch_size=args.batch_size,
        errors=args.errors,
        chunk_lines=args.chunk_lines,
        precision=args.precision,
        shard=shard or launch,
        with_text=args.with_text,
        model_id=model_path(args.model),
    )
    if args.quantize:
        summary = {**summary, **_quantize(args, target, encoder.hidden_size)}
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if summary["rows"] == 0 and not (shard or launch):
        print(f"{args.input} is empty: {args.output} has 0 rows", file=sys.stderr)
    if shard:
        i, n = shard
        print(
            f"shard {i}/{n} done; once every shard is: contrasent embed merge --output {args.output}"
        )
    if launch:
        _barrier()  # every process has finished its shard
        if launch[0] == 0:
            merged = merge_shards(args.output)
            print(" ".join(f"{k}={v}" for k, v in merged.items()))


def _float_target(output: str) -> str:
    out = Path(output)
    return str(out.with_name(out.name.removesuffix(out.suffix) + ".float32.npy"))


def _quantize(args: EmbedArgs, float_path: str, dim: int) -> dict[str, object]:
    """The float output quantized into --output (ranges beside it); the float file removed
    unless --keep_float."""
    from contrasent.serve.quantize import quantize_file, read_ranges

    ranges = read_ranges(args.quantize_ranges, dim) if args.quantize_ranges else None
    meta = quantize_file(float_path, args.output, args.quantize, ranges)
    if not args.keep_float:
        Path(float_path).unlink()
    return {"output": args.output, "quantized": args.quantize,
            "bytes_per_vector": meta["bytes_per_vector"]}  # fmt: skip


def _barrier() -> None:
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():  # gloo works for a CPU barrier next to any device
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    dist.barrier()
    dist.destroy_process_group()


def run_merge(args: MergeArgs) -> None:
    from contrasent.serve.embed import merge_shards

    summary = merge_shards(args.output, keep_chunks=args.keep_chunks)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
