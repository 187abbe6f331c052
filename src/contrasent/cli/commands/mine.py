"""`contrasent mine`: (anchor, positive) pairs -> the pairs with N hard negatives each
(the work is `contrasent.serve.mine`; the rules' options are `contrasent.serve.mine_options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contrasent.cli.args import (
    ModelArgs,
    check_faiss,
    check_input_file,
    check_output_file,
    check_suffix,
    model_path,
)
from contrasent.core.errors import UserError
from contrasent.serve.mine_options import MineSettings


@dataclass
class MineArgs(MineSettings, ModelArgs):
    """Add hard negatives to (anchor, positive) pairs; writes JSONL the `pairs` data kind reads
    (columns anchor, positive, negative_1..N, scores). The rules are sentence-transformers'
    mine_hard_negatives (same negatives for --sampling top). Memory: the candidate corpus is
    held (its texts and float32 embeddings, 4 x dim bytes a text); the pairs are read twice,
    streaming (~150 bytes of numbers a pair at the peak, whatever the texts' length; one
    chunk of anchors at a time).

    Args:
        input: Pairs file (TSV/CSV/JSONL, as the `pairs` data kind reads it).
        output: Output .jsonl; resumable: a killed run re-run with the same command continues
            from OUTPUT.mine-work/.
        anchor_column: Column of the anchor (a header name or an index); default: field 0.
        positive_column: Column of the positive; default: field 1.
        corpus: Extra candidate texts (one a line) besides the positives (default: the
            positives alone).
        index: An index folder of `contrasent index build` as the candidate corpus (besides the
            positives): its stored embeddings are reused (and its faiss index with --engine
            faiss); the model is the index's unless --model is given (it must be the same).
        output_scores: Keep the scores column ([positive, negative_1, ...] cosines).
        chunk_anchors: Distinct anchors per resumable chunk.
        shard: I/N: mine only the I-th (from 0) of N contiguous parts of the distinct anchors
            (give each shard its own --output; concatenate the outputs).
        on_error: Malformed rows and pairs without a positive: raise (one line, file:line) or
            skip (counted).
    """

    input: str = ""
    output: str = ""
    anchor_column: str | None = None
    positive_column: str | None = None
    corpus: str | None = None
    index: str | None = None
    output_scores: bool = True
    chunk_anchors: int = 4096
    shard: str | None = None
    on_error: Literal["raise", "skip"] = "raise"

    def validate(self) -> None:
        if self.index is not None:
            self._model_from_index()
        super().validate()
        if not self.input or not self.output:
            raise UserError("mine needs --input PAIRS and --output FILE.jsonl")
        check_input_file(self.input, "--input")
        if self.corpus is not None:
            check_input_file(self.corpus, "--corpus")
            if self.index is not None:
                raise UserError("give the candidates as --corpus FILE or --index DIR, not both")
        check_output_file(self.output, "--output")
        check_suffix(self.output, "--output", (".jsonl",))
        if (self.anchor_column is None) != (self.positive_column is None):
            raise UserError("give both --anchor_column and --positive_column, or neither")
        if self.chunk_anchors < 1:
            raise UserError(f"--chunk_anchors must be >= 1, got {self.chunk_anchors}")
        if self.engine == "faiss":
            check_faiss("faiss")
        self.window(1, 1 << 62)  # the range checks that need no data
        from contrasent.core.options import parse_shard

        parse_shard(self.shard)

    def _model_from_index(self) -> None:
        """No --model: the index's own model (and how it embedded), said in one line."""
        from contrasent.serve.mine_options import index_record

        record = index_record(self.index)  # type: ignore[arg-type]
        if self.model:
            return  # checked against the record once loaded (run_mine)
        self.model = record["name_or_path"]
        self.backend = record.get("backend", self.backend)
        self.file_name = record.get("file_name", self.file_name)
        for key in ("pooling", "normalize", "max_seq_length", "dim"):
            if getattr(self, key) is None:
                setattr(self, key, record.get(key))
        print(f"mine: the model the index {self.index} was built with: {self.model}", flush=True)

    def identity(self, encoder) -> dict:
        """How this run embeds (the work manifest's key; compared with an index's record)."""
        identity = {**encoder.config_dict(), "name_or_path": model_path(self.model)}
        if self.dim is not None:
            identity["dim"] = self.dim
        return identity


def run_mine(args: MineArgs) -> None:
    from contrasent.core.options import parse_shard
    from contrasent.serve.mine import PairsFile, describe, mine, read_corpus
    from contrasent.serve.mine_input import index_corpus
    from contrasent.serve.mine_options import index_record, model_mismatch

    columns = None
    if args.anchor_column is not None:
        columns = {"anchor": args.anchor_column, "positive": args.positive_column}
    pairs = PairsFile(args.input, columns, args.on_error)
    encoder = args.load()
    identity = args.identity(encoder)
    if args.index is not None:
        differs = model_mismatch(identity, index_record(args.index))
        if differs:
            raise UserError(
                f"--model {args.model} does not embed as the index {args.index} was built "
                f"({differs}); leave --model out to mine with the index's own model"
            )
        corpus = index_corpus(args.index, args.engine)
    else:
        corpus = read_corpus(args.corpus)

    def encode(texts: list[str]):
        return encoder.encode(texts, batch_size=args.batch_size, normalize=True)

    result = mine(
        encode,
        pairs,
        args.output,
        args.rules(),
        corpus,
        output_scores=args.output_scores,
        chunk_queries=args.chunk_anchors,
        shard=parse_shard(args.shard),
        identity=identity,
    )
    print(describe(result, args.rules()), flush=True)
