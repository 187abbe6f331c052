"""The `embed` (resumable, sharded), `embed merge`, `index build`, `search` and `export` commands.

Their options dataclasses and runners; `contrasent.cli` registers them in its ``COMMANDS`` table
(and imports this module only when one of them runs or shows its help). Each ``validate()`` does
every check that needs no model, so a mistake costs no model-loading time. The work itself is in
`contrasent.embed`, `contrasent.search`, `contrasent.index_build` and `contrasent.export`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrasent.cli import ModelArgs, check_output_file
from contrasent.errors import UserError

Engine = Literal["auto", "exact", "faiss"]
OUTPUT_FORMATS = (".npy", ".parquet", ".jsonl")  # embed_merge.FORMATS (no numpy import here)


# ----------------------------------------------------------------------------- checks
def _check_input_file(path: str, option: str) -> None:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {path}: no such file")
    if not p.is_file():
        raise UserError(f"{option} {path} is a folder; give a text file (one text a line)")


def _check_suffix(path: str, option: str, suffixes: tuple[str, ...]) -> None:
    if Path(path).suffix.lower() not in suffixes:
        raise UserError(
            f"{option} {path}: unknown format; use a name ending in {', '.join(suffixes)}"
        )


def _check_output_folder(path: str, option: str, marker: str, kind: str) -> None:
    """A folder that can be (re)written: absent, empty, or an earlier one of this ``kind``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {path} exists and is a file; give a folder")
    if p.is_dir() and any(p.iterdir()) and not (p / marker).is_file():
        raise UserError(
            f"{option} {path} exists and is not {kind} (no {marker}); refusing to replace it"
        )
    parent = next(a for a in p.absolute().parents if a.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent}")


def _check_faiss(engine: str | None) -> None:
    if engine == "faiss":
        from contrasent.search_faiss import faiss_available

        if not faiss_available():
            raise UserError("--engine faiss needs the faiss-cpu package: pip install faiss-cpu")


# ----------------------------------------------------------------------------- options
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
    """

    input: str = ""
    output: str = ""
    errors: Literal["strict", "replace"] = "strict"
    shard: str | None = None
    chunk_lines: int = 20000
    with_text: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.input or not self.output:
            raise UserError("embed needs --input FILE and --output FILE (.npy, .parquet or .jsonl)")
        _check_input_file(self.input, "--input")
        check_output_file(self.output, "--output")
        _check_suffix(self.output, "--output", OUTPUT_FORMATS)
        if self.with_text and Path(self.output).suffix.lower() == ".npy":
            raise UserError("--with_text needs a .parquet or .jsonl --output (.npy holds numbers)")
        if self.chunk_lines < 1:
            raise UserError(f"--chunk_lines must be >= 1, got {self.chunk_lines}")
        from contrasent.embed import parse_shard

        parse_shard(self.shard)


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
        _check_suffix(self.output, "--output", OUTPUT_FORMATS)


@dataclass
class IndexBuildArgs(ModelArgs):
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

    def validate(self) -> None:
        super().validate()
        if not self.input or not self.output:
            raise UserError("index build needs --input FILE and --output DIR")
        _check_input_file(self.input, "--input")
        _check_output_folder(self.output, "--output", "index.json", "an index folder")
        if self.embeddings is not None:
            if not Path(self.embeddings).is_file():
                raise UserError(f"--embeddings {self.embeddings}: no such file")
            _check_suffix(self.embeddings, "--embeddings", (".npy",))
        _check_faiss(self.engine)


@dataclass
class SearchArgs:
    """Search an index: contrasent search --index DIR QUERY... (or --queries FILE).

    Args:
        query: Query texts (the bare arguments).
        index: Index folder written by `contrasent index build`.
        queries: File with one query a line (empty lines are skipped and counted).
        top_k: Hits per query (fewer when the index is smaller).
        threshold: Only hits with cosine >= this.
        output: Write one JSON line per query to this .jsonl file ({"query", "hits": [{"id",
            "text", "score"}]}) instead of printing a table.
        model: Embed queries with this model instead of the one recorded in the index.
        engine: exact or faiss; default: what the index was saved with.
        nprobe: faiss IVF cells visited per query (more = better recall, slower).
        device: "cpu", "cuda", ...; default: CUDA when available.
        batch_size: Queries per forward pass.
    """

    query: list[str] = field(default_factory=list)
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

    def validate(self) -> None:
        if not self.index:
            raise UserError("search needs --index DIR (written by `contrasent index build`)")
        if self.query and self.queries:
            raise UserError("give queries as arguments or with --queries FILE, not both")
        if not self.query and not self.queries:
            raise UserError("search needs at least one QUERY argument or --queries FILE")
        empty = [i for i, q in enumerate(self.query, start=1) if not q.strip()]
        if empty:
            raise UserError(f"query {empty[0]} is empty")
        if self.queries:
            _check_input_file(self.queries, "--queries")
        if not (Path(self.index) / "index.json").is_file():
            raise UserError(f"--index {self.index} is not a contrasent index (no index.json)")
        if self.top_k < 1:
            raise UserError(f"--top_k must be >= 1, got {self.top_k}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise UserError(f"--threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.nprobe is not None and self.nprobe < 1:
            raise UserError(f"--nprobe must be >= 1, got {self.nprobe}")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.output:
            check_output_file(self.output, "--output")
            _check_suffix(self.output, "--output", (".jsonl",))
        if self.model is not None and not self.model:
            raise UserError("--model is empty")
        _check_faiss(self.engine)


@dataclass
class ExportArgs(ModelArgs):
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

    def validate(self) -> None:
        super().validate()
        if self.backend != "torch":
            raise UserError("export reads a torch model; --backend onnx models are already ONNX")
        if not self.output:
            raise UserError("export needs --output DIR")
        _check_output_folder(self.output, "--output", "modules.json", "a model folder")
        if Path(self.output).absolute() == Path(self.model).absolute():
            raise UserError("--output must differ from the model folder")
        if not 13 <= self.opset <= 21:
            raise UserError(
                f"--opset must be in [13, 21] (what this export supports), got {self.opset}"
            )


# ----------------------------------------------------------------------------- runners
def run_index_build(args: IndexBuildArgs) -> None:
    from contrasent.index_build import build_index

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


def run_search(args: SearchArgs) -> None:
    from contrasent.search import Index

    queries = _collect_queries(args.query, args.queries)
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
    if not path:
        return positional
    from contrasent.embed import read_all_lines

    lines = read_all_lines(Path(path))
    queries = [q.strip() for q in lines if q.strip()]
    if len(queries) < len(lines):
        print(f"{path}: skipped {len(lines) - len(queries)} empty line(s)", file=sys.stderr)
    if not queries:
        raise UserError(f"{path}: no queries (the file has no non-empty lines)")
    return queries


def _query_encoder(model: dict[str, Any] | None, args: SearchArgs) -> Any:
    from contrasent.cli import _quiet_transformers
    from contrasent.encoder import Encoder

    _quiet_transformers()
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


def run_export(args: ExportArgs) -> None:
    from contrasent.export import export_onnx

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


def run_embed(args: EmbedArgs) -> None:
    from contrasent.embed import embed_file, merge_shards, parse_shard

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

    summary = merge_shards(args.output, keep_chunks=args.keep_chunks)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
