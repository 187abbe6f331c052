"""`contrasent export`: MODEL to ONNX, sentence-transformers layout (`contrasent.model.export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contrasent.cli.args import ModelArgs, check_output_folder
from contrasent.core.errors import UserError


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
        check_output_folder(self.output, "--output", "modules.json", "a model folder")
        if Path(self.output).absolute() == Path(self.model).absolute():
            raise UserError("--output must differ from the model folder")
        if not 13 <= self.opset <= 21:
            raise UserError(
                f"--opset must be in [13, 21] (what this export supports), got {self.opset}"
            )


def run_export(args: ExportArgs) -> None:
    from contrasent.model.export import export_onnx

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
