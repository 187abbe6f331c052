"""`contrasent mine`: (anchor, positive) pairs -> the pairs with N hard negatives each
(the work is `contrasent.serve.mine`)."""

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


@dataclass
class MineArgs(ModelArgs):
    """Add hard negatives to (anchor, positive) pairs; writes JSONL the `pairs` data kind reads
    (columns anchor, positive, negative_1..N, scores). The rules are sentence-transformers'
    mine_hard_negatives (same negatives for --sampling top).

    Args:
        input: Pairs file (TSV/CSV/JSONL, as the `pairs` data kind reads it).
        output: Output .jsonl; resumable: a killed run re-run with the same command continues
            from OUTPUT.mine-work/.
        anchor_column: Column of the anchor (a header name or an index); default: field 0.
        positive_column: Column of the positive; default: field 1.
        corpus: Extra candidate texts (one a line) besides the positives (default: the
            positives alone).
        num_negatives: Negatives per pair (rows with fewer survivors are not written, counted).
        range_min: Skip the first range_min ranked candidates (after the filters below).
        range_max: Consider candidates up to this rank; default: range_min + num_negatives
            (x10 with a margin or max_score) + the most positives an anchor has.
        margin: Absolute margin: keep a negative only if score < positive score - margin.
        relative_margin: Relative margin (NV-Retriever): keep it only if
            score < positive - |positive| * relative_margin (0.05: TopK-PercPos 95%).
        max_score: Drop candidates scoring above this (likely false negatives).
        sampling: top: the best-ranked survivors; random: drawn from the window (keyed by
            --seed and the anchor: reproducible, the same whatever the shards).
        seed: Seed of --sampling random.
        engine: exact (the project's blocked exact top-k) or faiss (a flat inner-product
            index, for large corpora).
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
    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    sampling: Literal["top", "random"] = "top"
    seed: int = 12
    engine: Literal["exact", "faiss"] = "exact"
    output_scores: bool = True
    chunk_anchors: int = 4096
    shard: str | None = None
    on_error: Literal["raise", "skip"] = "raise"

    def validate(self) -> None:
        super().validate()
        if not self.input or not self.output:
            raise UserError("mine needs --input PAIRS and --output FILE.jsonl")
        check_input_file(self.input, "--input")
        if self.corpus is not None:
            check_input_file(self.corpus, "--corpus")
        check_output_file(self.output, "--output")
        check_suffix(self.output, "--output", (".jsonl",))
        if (self.anchor_column is None) != (self.positive_column is None):
            raise UserError("give both --anchor_column and --positive_column, or neither")
        if self.chunk_anchors < 1:
            raise UserError(f"--chunk_anchors must be >= 1, got {self.chunk_anchors}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise UserError(f"--relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.engine == "faiss":
            check_faiss("faiss")
        self.settings().window(1, 1 << 62)  # the range checks that need no data
        from contrasent.core.options import parse_shard

        parse_shard(self.shard)

    def settings(self):
        from contrasent.serve.mine import MineSettings

        return MineSettings(
            num_negatives=self.num_negatives,
            range_min=self.range_min,
            range_max=self.range_max,
            margin=self.margin,
            relative_margin=self.relative_margin,
            max_score=self.max_score,
            sampling=self.sampling,
            seed=self.seed,
            engine=self.engine,
        )


def run_mine(args: MineArgs) -> None:
    from contrasent.core.options import parse_shard
    from contrasent.serve.mine import describe, mine, read_corpus, read_pairs

    columns = None
    if args.anchor_column is not None:
        columns = {"anchor": args.anchor_column, "positive": args.positive_column}
    anchors, positives = read_pairs(args.input, columns, args.on_error)
    corpus = read_corpus(args.corpus)
    settings = args.settings()
    encoder = args.load()

    def encode(texts: list[str]):
        return encoder.encode(texts, batch_size=args.batch_size, normalize=True)

    identity = {**encoder.config_dict(), "name_or_path": model_path(args.model)}
    result = mine(
        encode,
        anchors,
        positives,
        args.output,
        settings,
        corpus,
        output_scores=args.output_scores,
        chunk_queries=args.chunk_anchors,
        shard=parse_shard(args.shard),
        identity=identity,
    )
    print(describe(result, settings), flush=True)
