"""`contrasent eval`: STS (Spearman x100), SentEval transfer tasks (accuracy x100) and tasks on
the user's own files (retrieval, reranking, pair classification, STS, clustering)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contrasent.cli.args import ModelArgs, check_output_file, check_output_folder


@dataclass
class EvalArgs(ModelArgs):
    """Evaluate an encoder on STS (Spearman x100), SentEval transfer tasks (accuracy x100) and
    your own task files.

    Args:
        tasks: "sts" (default: STS12-16, STS-B, SICK-R), "transfer" (MR, CR, SUBJ, MPQA, SST2,
            TREC, MRPC), "full" (both), or comma-separated names: sts12..sts16, stsb, sickr, MR,
            CR, SUBJ, MPQA, SST2, TREC, MRPC, SICKEntailment; mixed freely with your own task
            files: KIND:PATH or NAME=KIND:PATH with KIND retrieval (a BEIR folder), reranking
            (.jsonl), pairs (.tsv sentence1/sentence2/label), sts (.tsv
            sentence1/sentence2/score) or clustering (.tsv text/label); a bare PATH when its
            kind is clear from the file. Results: tasks.NAME.METRIC in --output.
        mode: STS: "test" every task, "dev" STS-B dev + SICK-R trial only ("fasttest" = test).
            Transfer (SimCSE's settings): "test" 10-fold Adam classifier; "fasttest" 5-fold
            RMSprop classifier, test accuracy; "dev" the fasttest classifier, dev accuracy.
        data_dir: Folder in SentEval's data/downstream layout; default: $CONTRASENT_DATA, else
            ../shared/data/senteval.
        output: Write every number to this JSON file.
        plots: Write PNG figures to this folder: gold vs cosine per STS task and the similarity
            distribution by gold score on STS-B.
        dims: Also evaluate at these embedding sizes, e.g. 64,128,256 (each the first N
            dimensions, L2-normalised again; a Matryoshka model's sizes): one table per size,
            results under dims.N in --output. Texts are encoded once.
    """

    tasks: str | None = None
    mode: Literal["dev", "test", "fasttest"] = "test"
    data_dir: str | None = None
    output: str | None = None
    plots: str | None = None
    dims: str | None = None

    def validate(self) -> None:
        from contrasent.data.senteval import load_task, resolve_data_dir
        from contrasent.eval.sts import resolve_tasks
        from contrasent.eval.suite import check_tasks
        from contrasent.eval.transfer import resolve_transfer_tasks
        from contrasent.eval.transfer_data import load_transfer_task

        super().validate()
        if self.dims is not None:
            from contrasent.model.dims import parse_dims

            self.dim_list = parse_dims(self.dims)
        if self.output:
            check_output_file(self.output, "--output")
        if self.plots:
            check_output_folder(self.plots, "--plots")
        plan = check_tasks(self.tasks, self.mode, self.data_dir)  # task files read here, once
        self.plan = plan  # run_eval evaluates what was read
        sts_names, transfer_names = plan.sts, plan.transfer
        if not sts_names and not transfer_names:
            return
        root = resolve_data_dir(self.data_dir)
        sts_mode = "dev" if self.mode == "dev" else "test"
        for task in resolve_tasks(sts_names, sts_mode) if sts_names else ():
            load_task(root, task, sts_mode)  # a missing or malformed file fails now
        for task in resolve_transfer_tasks(transfer_names) if transfer_names else ():
            load_transfer_task(root, task)


def run_eval(args: EvalArgs) -> None:
    import time

    from contrasent.eval.suite import evaluate, format_tables
    from contrasent.eval.tables import write_results
    from contrasent.model.dims import at_dim, check_dim, memo_encode

    encoder = args.load()
    dims = getattr(args, "dim_list", None) or []
    for d in sorted(dims, reverse=True):  # too large: one line (before any warning), no encoding
        check_dim(d, encoder.hidden_size, encoder.matryoshka_dims, "--dims")

    def encode(texts: list[str]):
        return encoder.encode(texts, batch_size=args.batch_size, precision=args.precision)

    if dims:
        encode = memo_encode(encode)  # every size truncates the same full-width embeddings
    start = time.perf_counter()
    plan = getattr(args, "plan", None)
    results, scores = evaluate(encode, args.tasks, args.mode, args.data_dir, bars=True, plan=plan)
    results["model"] = args.model
    results["encoder"] = encoder.config_dict()
    results["precision"] = _precision_used(encoder, args.precision)
    print(format_tables(results))
    if dims:
        results["dims"] = {}
        for d in dims:
            at, _ = evaluate(at_dim(encode, d), args.tasks, args.mode, args.data_dir, plan=plan)
            results["dims"][str(d)] = at
            print(f"\n--- at {d} dimensions ---\n{format_tables(at)}")
    results["time_s"] = round(time.perf_counter() - start, 2)
    print(f"evaluated in {results['time_s']:.1f}s")
    if args.output:
        write_results(results, args.output)
        print(f"results written to {args.output}")
    if args.plots:
        from contrasent.eval.plots import eval_plots

        written = eval_plots(results, scores, args.plots)
        print(f"{len(written)} plots written to {args.plots}")


def _precision_used(encoder, precision: str) -> str:
    """The precision ``auto`` resolved to (recorded with the numbers)."""
    from contrasent.model.encoder import Encoder
    from contrasent.model.loading import resolve_precision

    if not isinstance(encoder, Encoder):  # ONNX: the file's own precision
        return "fp32"
    return resolve_precision(encoder.device, precision)
