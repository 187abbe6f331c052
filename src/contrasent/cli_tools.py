"""The `index build`, `search`, `export` and `embed` (sharded, resumable, `embed merge`) commands.

`contrasent.cli` registers these parsers and calls the ``run_*`` functions; the work itself is
in `contrasent.search`, `contrasent.export` and `contrasent.embed`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contrasent.errors import UserError

Engine = Literal["auto", "exact", "faiss"]


@dataclass
class IndexBuildArgs:
    """Build a search index from a corpus file (one text a line; id = line number from 0).

    Args:
        input: Corpus text file (.txt or .txt.gz); empty lines keep their id but are never hits.
        output: Index folder to write (replaced atomically when it is an index folder).
        embeddings: Use this .npy (row i = line i, e.g. from `contrasent embed`) instead of
            embedding the corpus; --model is still recorded for embedding the queries.
        engine: Search engine saved with the index: exact (blocked matmul), faiss (approximate
            IVF; exact flat index when small), auto (faiss from 200k rows when installed).
        errors: Invalid UTF-8: strict stops with the line number; replace substitutes U+FFFD.
    """

    input: str = ""
    output: str = ""
    embeddings: str | None = None
    engine: Engine = "auto"
    errors: Literal["strict", "replace"] = "strict"


@dataclass
class SearchArgs:
    """Search an index with one or more queries (arguments, or --queries FILE).

    Args:
        index: Index folder written by `contrasent index build`.
        queries: File with one query a line (empty lines are skipped and counted).
        top_k: Hits per query (fewer when the index is smaller).
        threshold: Only hits with cosine >= this.
        output: Write one JSON line per query here ({"query", "hits": [{"id", "text", "score"}]})
            instead of printing a table.
        model: Embed queries with this model instead of the one recorded in the index.
        engine: exact or faiss; default: what the index was saved with.
        nprobe: faiss IVF cells visited per query (more = better recall, slower).
        device: "cpu", "cuda", ...; default: CUDA when available.
        batch_size: Queries per forward pass.
    """

    index: str = ""
    queries: str | None = None
    top_k: int = 5
    threshold: float | None = None
    output: str | None = None
    model: str | None = None
    engine: Literal["exact", "faiss"] | None = None
    nprobe: int | None = None
    device: str | None = None
    batch_size: int = 64


@dataclass
class ExportArgs:
    """Export MODEL to ONNX in the sentence-transformers layout (onnx/model.onnx, int8 optional).

    Args:
        output: Output folder (a sentence-transformers directory with an onnx/ subfolder).
        format: Export format.
        quantize: Also write a dynamically quantized int8 model (onnx/model_qint8_<target>.onnx).
        int8_target: sentence-transformers' int8 preset / file-name suffix; default: this CPU's.
        opset: ONNX opset version.
    """

    output: str = ""
    format: Literal["onnx"] = "onnx"
    quantize: Literal["int8"] | None = None
    int8_target: Literal["avx512_vnni", "avx512", "avx2", "arm64"] | None = None
    opset: int = 17


@dataclass
class MergeArgs:
    """Join the finished shards of `contrasent embed --shard I/N --output OUT` into OUT.

    Args:
        output: The --output every shard was given (.npy, .parquet or .jsonl).
        keep_chunks: Keep the shard chunk folders after a successful merge.
    """

    output: str = ""
    keep_chunks: bool = False


# ----------------------------------------------------------------------------- runners
def run_index_build(args: Any) -> None:
    from contrasent.index_build import build_index

    if not args.input or not args.output:
        raise UserError("index build needs --input FILE and --output DIR")
    encoder = args.load()
    model = {**encoder.config_dict(), "name_or_path": _model_path(args.model)}
    index = build_index(
        encoder,
        args.input,
        args.output,
        embeddings_path=args.embeddings,
        batch_size=args.batch_size,
        errors=args.errors,
        engine=args.engine,
        model=model,
    )
    print(
        f"indexed {len(index) - len(index.excluded)} texts ({len(index.excluded)} empty lines "
        f"skipped) from {args.input} into {args.output} [engine: {index.engine}]"
    )


def run_search(args: SearchArgs, queries: list[str]) -> None:
    from contrasent.search import Index

    if not args.index:
        raise UserError("search needs --index DIR")
    if args.top_k < 1:
        raise UserError(f"--top_k must be >= 1, got {args.top_k}")
    queries = _collect_queries(queries, args.queries)
    index = Index.load(args.index, engine=args.engine, nprobe=args.nprobe)
    index.encoder = _query_encoder(index.model, args)
    hits = index.search(
        queries, top_k=args.top_k, threshold=args.threshold, batch_size=args.batch_size
    )
    if args.output:
        from contrasent.fileio import atomic_write_text

        lines = [
            json.dumps({"query": q, "hits": [_hit_record(h) for h in hs]}, ensure_ascii=False)
            for q, hs in zip(queries, hits, strict=True)
        ]
        atomic_write_text(args.output, "".join(line + "\n" for line in lines))
        print(f"{len(queries)} queries, hits written to {args.output}")
        return
    print(format_hits(queries, hits))


def _hit_record(hit: Any) -> dict[str, Any]:
    return {"id": hit.id, "text": hit.text, "score": hit.score}


def format_hits(queries: list[str], hits: list[list[Any]], width: int = 90) -> str:
    """A table per query: rank, cosine, id and the (shortened) text."""
    blocks = []
    for q, hs in zip(queries, hits, strict=True):
        rows = [f"query: {q}", f"  {'rank':>4}  {'score':>6}  {'id':>8}  text"]
        for rank, h in enumerate(hs, start=1):
            text = h.text if len(h.text) <= width else h.text[: width - 3] + "..."
            rows.append(f"  {rank:>4}  {h.score:6.4f}  {h.id:>8}  {text}")
        if not hs:
            rows.append("  (no hits)")
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks)


def _collect_queries(positional: list[str], path: str | None) -> list[str]:
    if positional and path:
        raise UserError("give queries as arguments or with --queries FILE, not both")
    if path:
        from contrasent.embed import read_all_lines

        lines = read_all_lines(Path(path))
        queries = [q.strip() for q in lines if q.strip()]
        if len(queries) < len(lines):
            print(f"{path}: skipped {len(lines) - len(queries)} empty line(s)", file=sys.stderr)
        if not queries:
            raise UserError(f"{path}: no queries (the file has no non-empty lines)")
        return queries
    if not positional:
        raise UserError("search needs at least one QUERY argument or --queries FILE")
    empty = [i for i, q in enumerate(positional, start=1) if not q.strip()]
    if empty:
        raise UserError(f"query {empty[0]} is empty")
    return positional


def _query_encoder(model: dict[str, Any] | None, args: SearchArgs) -> Any:
    from transformers.utils import logging as hf_logging

    from contrasent.encoder import Encoder

    hf_logging.disable_progress_bar()  # per-weight load bars are noise on a CLI

    if args.model is None and not (model and model.get("name_or_path")):
        raise UserError(f"{args.index}: the index records no model; pass --model")
    if args.model is not None:
        return Encoder.from_pretrained(args.model, device=args.device)
    return Encoder.from_pretrained(
        model["name_or_path"],
        pooling=model.get("pooling") if model.get("backend", "torch") == "torch" else None,
        normalize=model.get("normalize"),
        max_seq_length=model.get("max_seq_length"),
        device=args.device,
        backend=model.get("backend", "torch"),
        file_name=model.get("file_name"),
    )


def _model_path(model: str) -> str:
    """An existing local path made absolute (the index may be searched from elsewhere)."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else model


def run_export(args: Any) -> None:
    from contrasent.export import export_onnx

    if not args.output:
        raise UserError("export needs --output DIR")
    meta = export_onnx(
        args.load(),
        args.output,
        quantize=args.quantize,
        int8_target=args.int8_target,
        opset=args.opset,
    )
    for name, info in meta["files"].items():
        print(
            f"{Path(args.output) / 'onnx' / name}: {info['precision']}, {info['bytes'] / 1e6:.1f} MB, "
            f"min cosine vs torch {info['min_cosine_vs_torch']:.6f}"
        )


# ----------------------------------------------------------------------------- embed
def distributed_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun / accelerate launch with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def run_embed(args: Any) -> None:
    from contrasent.embed import embed_file, merge_shards, parse_shard

    if not args.input or not args.output:
        raise UserError("embed needs --input FILE and --output FILE (.npy, .parquet or .jsonl)")
    shard = parse_shard(args.shard)
    launched = distributed_shard() if shard is None else None
    if launched and args.device is None:
        import torch

        if torch.cuda.is_available():  # one GPU per process
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    encoder = args.load()
    summary = embed_file(
        encoder,
        args.input,
        args.output,
        batch_size=args.batch_size,
        errors=args.errors,
        chunk_lines=args.chunk_lines,
        precision=args.precision,
        shard=shard or launched,
        with_text=args.with_text,
        model_id=_model_path(args.model),
    )
    print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    if summary["rows"] == 0 and not (shard or launched):
        print(f"{args.input} is empty: {args.output} has 0 rows", file=sys.stderr)
    if shard:
        i, n = shard
        print(
            f"shard {i}/{n} done; once every shard is: contrasent embed merge --output {args.output}"
        )
    if launched:
        _barrier()  # every process has finished its shard
        if launched[0] == 0:
            merged = merge_shards(args.output)
            print(" ".join(f"{k}={v}" for k, v in merged.items()))


def _barrier() -> None:
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():  # gloo works for a CPU barrier next to any device
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    dist.barrier()
    dist.destroy_process_group()


def run_merge(args: MergeArgs) -> None:
    from contrasent.embed import merge_shards

    if not args.output:
        raise UserError("embed merge needs --output FILE (the --output the shards were given)")
    summary = merge_shards(args.output, keep_chunks=args.keep_chunks)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
