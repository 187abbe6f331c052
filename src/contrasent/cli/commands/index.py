"""`contrasent index build`: a search index folder from a corpus file (`contrasent.serve.index`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contrasent.cli.args import (
    ModelArgs,
    check_faiss,
    check_input_file,
    check_output_folder,
    check_suffix,
    model_path,
)
from contrasent.core.errors import UserError


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
        quantize: Store quantized codes instead of float32 rows: binary (1 bit a dimension,
            32x smaller, Hamming search) or int8 (1 byte a dimension, 4x smaller, calibration
            ranges of the corpus stored); `contrasent search --rescore_k K` re-ranks the top K.
        keep_float: With --quantize, keep the float32 rows too (for rescoring by them: better
            recall, the float memory on disk; only the candidates' rows are read).
    """

    input: str = ""
    output: str = ""
    embeddings: str | None = None
    engine: Literal["auto", "exact", "faiss"] = "auto"
    errors: Literal["strict", "replace"] = "strict"
    quantize: Literal["binary", "int8"] | None = None
    keep_float: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.input or not self.output:
            raise UserError("index build needs --input FILE and --output DIR")
        check_input_file(self.input, "--input")
        check_output_folder(self.output, "--output", "index.json", "an index folder")
        if self.embeddings is not None:
            if not Path(self.embeddings).is_file():
                raise UserError(f"--embeddings {self.embeddings}: no such file")
            check_suffix(self.embeddings, "--embeddings", (".npy",))
        if self.keep_float and self.quantize is None:
            raise UserError("--keep_float keeps float rows beside quantized codes: add --quantize")
        if self.quantize is not None and self.engine == "faiss":
            raise UserError(
                "--engine faiss is for float indexes: a --quantize index searches its codes "
                "(binary: faiss IndexBinaryFlat when installed); leave --engine out"
            )
        check_faiss(self.engine)


def run_index_build(args: IndexBuildArgs) -> None:
    from contrasent.serve.index import build_index

    encoder = args.load()
    # an absolute model path: the index may be searched from another folder
    model = {**encoder.config_dict(), "name_or_path": model_path(args.model)}
    if args.dim is not None:  # queries are embedded at the same --dim (identity Dense head)
        model["dim"] = args.dim
    index = build_index(
        encoder,
        args.input,
        args.output,
        embeddings_path=args.embeddings,
        batch_size=args.batch_size,
        errors=args.errors,
        engine=args.engine,
        model=model,
        precision=args.precision,
        quantize=args.quantize,
        keep_float=args.keep_float,
    )
    print(
        f"indexed {len(index) - len(index.excluded)} texts ({len(index.excluded)} empty lines "
        f"skipped) from {args.input} into {args.output} [engine: {index.engine}]"
    )
    print(memory_line(index))


def memory_line(index) -> str:
    """Bytes per vector of what the index stores (codes, kept floats) against float32."""
    info = getattr(index, "quantization", None)
    if info is None:
        return f"memory: {4 * index.dim} bytes per vector (float32, dim {index.dim})"
    q = info()
    kept = "float32 rows kept too" if q["floats_kept"] else "no float rows stored"
    return (
        f"memory: {q['bytes_per_vector']} bytes per vector ({q['precision']} codes, dim "
        f"{index.dim}; float32: {q['float32_bytes_per_vector']}); {kept}: "
        f"{q['stored_bytes_per_vector']} bytes per vector stored"
    )
