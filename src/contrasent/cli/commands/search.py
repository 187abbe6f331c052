"""`contrasent search`: query an index folder (`contrasent.serve.search`); a table or JSON lines."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contrasent.cli.args import (
    check_faiss,
    check_input_file,
    check_output_file,
    check_suffix,
    quiet_transformers,
)
from contrasent.core.errors import UserError


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
        dim: Search at the first N dimensions of the index and the queries, L2-normalised
            again (a Matryoshka model's smaller size; exact search); default: the index's.
        rescore_k: Quantized index (`index build --quantize`): the first stage (Hamming / int8
            dot product) keeps K candidates, re-ranked by the float query (K >= --top_k).
        rescore_by: What the float query is scored against: float (the corpus rows kept by
            --keep_float), codes (unpacked bits / int8 bucket centres); auto: float when kept.
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
    dim: int | None = None
    rescore_k: int | None = None
    rescore_by: Literal["auto", "float", "codes"] = "auto"

    def validate(self) -> None:
        self._check_inputs()
        if self.dim is not None and self.dim < 1:
            raise UserError(f"--dim must be >= 1, got {self.dim}")
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
        if self.rescore_k is not None and self.rescore_k < self.top_k:
            raise UserError(f"--rescore_k {self.rescore_k} must be >= --top_k {self.top_k}")
        if self.output:
            check_output_file(self.output, "--output")
            check_suffix(self.output, "--output", (".jsonl",))
        if self.model is not None and not self.model:
            raise UserError("--model is empty")
        check_faiss(self.engine)

    def _check_inputs(self) -> None:
        """An index, and queries given one way (arguments or a file), none of them empty."""
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
            check_input_file(self.queries, "--queries")


def run_search(args: SearchArgs) -> None:
    from contrasent.serve.quantized_index import QuantizedIndex, load_index

    queries = _collect_queries(args.query, args.queries)
    rescore = {"rescore_k": args.rescore_k, "rescore_by": args.rescore_by}
    index = load_index(args.index, engine=args.engine, nprobe=args.nprobe, **rescore)
    if isinstance(index, QuantizedIndex) and args.dim is not None and args.dim != index.dim:
        raise UserError(
            f"--dim {args.dim}: {args.index} holds {index.precision} codes of dim {index.dim}, "
            "which cannot be cut; build the index with --dim N --quantize instead"
        )
    index.encoder = _query_encoder(index.model, args)
    if args.dim is not None and args.dim != index.dim:
        index = _at_dim(index, args.dim)
    hits = index.search(
        queries, top_k=args.top_k, threshold=args.threshold, batch_size=args.batch_size
    )
    if args.output:
        from contrasent.core.fileio import atomic_write_text

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
    from contrasent.serve.embed import read_all_lines

    lines = read_all_lines(Path(path))
    queries = [q.strip() for q in lines if q.strip()]
    if len(queries) < len(lines):
        print(f"{path}: skipped {len(lines) - len(queries)} empty line(s)", file=sys.stderr)
    if not queries:
        raise UserError(f"{path}: no queries (the file has no non-empty lines)")
    return queries


def _at_dim(index: Any, dim: int) -> Any:
    """The index's rows and query encoder cut to ``dim`` columns, re-normalised (exact search;
    the rows are read into memory)."""
    import numpy as np

    from contrasent.model.dims import apply_dim, truncate
    from contrasent.serve.search import Index

    apply_dim(index.encoder, dim)  # checks dim against the query encoder (= the index's dim)
    rows = truncate(np.asarray(index.embeddings, dtype=np.float32), dim)
    return Index(rows, index.texts, encoder=index.encoder, normalized=True, engine="exact",
                 model=index.model, excluded=index.excluded)  # fmt: skip


def _query_encoder(model: dict[str, Any] | None, args: SearchArgs) -> Any:
    """--model when given, else the encoder the index records (so queries match the corpus),
    at the --dim the index was built with."""
    from contrasent.model.dims import apply_dim

    encoder = _load_query_encoder(model, args)
    return apply_dim(encoder, (model or {}).get("dim"), "the index's dim")


def _load_query_encoder(model: dict[str, Any] | None, args: SearchArgs) -> Any:
    from contrasent.model.encoder import Encoder

    quiet_transformers()
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
