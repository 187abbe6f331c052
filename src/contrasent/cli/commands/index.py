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
    """

    input: str = ""
    output: str = ""
    embeddings: str | None = None
    engine: Literal["auto", "exact", "faiss"] = "auto"
    errors: Literal["strict", "replace"] = "strict"

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
    )
    print(
        f"indexed {len(index) - len(index.excluded)} texts ({len(index.excluded)} empty lines "
        f"skipped) from {args.input} into {args.output} [engine: {index.engine}]"
    )
