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
        trajectory_pairs: STS-B dev pairs embedded per checkpoint, a fixed sample (0: all).
        trajectory_checkpoints: Checkpoints embedded, evenly spread, the last kept (0: all).
        trajectory_budget: Seconds the checkpoint trajectory may take, estimated before it
            starts: fewer checkpoints, or skipped with a note (0: no limit).
    """

    run_dir: str = ""
    checkpoints: bool = False
    data_dir: str | None = None
    trajectory_pairs: int = 256
    trajectory_checkpoints: int = 6
    trajectory_budget: float = 60.0

    def validate(self) -> None:
        from contrasent.report import check_run_dir

        if not self.run_dir:
            raise UserError("report needs a run folder: contrasent report RUN_DIR")
        check_run_dir(self.run_dir)
        check_output_folder(str(Path(self.run_dir) / "report"), "report folder")
        for name in ("trajectory_pairs", "trajectory_checkpoints", "trajectory_budget"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        if self.checkpoints and self.data_dir:  # else the recipe's, found by build_report
            from contrasent.data.senteval import read_stsb, resolve_data_dir

            read_stsb(resolve_data_dir(self.data_dir), "dev")


def run_report(args: ReportArgs) -> None:
    from contrasent.report import TrajectoryLimits, build_report

    limits = TrajectoryLimits(
        args.trajectory_pairs, args.trajectory_checkpoints, args.trajectory_budget
    )
    path = build_report(args.run_dir, args.checkpoints, args.data_dir, limits)
    print(f"report written to {path}")
