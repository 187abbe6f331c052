"""`contrasent report`: RUN_DIR/report/report.html (+ PNGs) from a training run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contrasent.cli.args import check_output_folder
from contrasent.core.errors import UserError


@dataclass
class ReportArgs:
    """Build RUN_DIR/report/report.html (+ PNGs) from a training run folder.

    Args:
        run_dir: The run's output_dir (config.json, metrics.jsonl, checkpoints/, final/).
        checkpoints: Embed STS-B dev with every checkpoint's encoder for the alignment /
            uniformity trajectory, instead of reading the numbers logged in metrics.jsonl.
        data_dir: STS data for --checkpoints; default: the recipe's eval.data_dir, else
            $CONTRASENT_DATA, else ../shared/data/senteval.
    """

    run_dir: str = ""
    checkpoints: bool = False
    data_dir: str | None = None

    def validate(self) -> None:
        from contrasent.report import check_run_dir

        if not self.run_dir:
            raise UserError("report needs a run folder: contrasent report RUN_DIR")
        check_run_dir(self.run_dir)
        check_output_folder(str(Path(self.run_dir) / "report"), "report folder")
        if self.checkpoints and self.data_dir:  # else the recipe's, found by build_report
            from contrasent.data.senteval import read_stsb, resolve_data_dir

            read_stsb(resolve_data_dir(self.data_dir), "dev")


def run_report(args: ReportArgs) -> None:
    from contrasent.report import build_report

    path = build_report(args.run_dir, from_checkpoints=args.checkpoints, data_dir=args.data_dir)
    print(f"report written to {path}")
