"""Mistakes as a user makes them, each run as its own process: exit status 2, ONE line on stderr
naming the problem (the recipe file:line where there is one), no traceback, and nothing in the
output folder changed (it holds an earlier run's model throughout).

The processes are forked from one driver process that imported the CLI once (a fresh
interpreter per case would spend most of the test importing torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = r"""
import json, os, sys
from contrasent.cli import main as cli
import contrasent.train.config, contrasent.objectives, contrasent.eval.sts  # imported once

results = []
for argv in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    results.append({"argv": argv, "code": os.waitstatus_to_exitcode(status), "stderr": err})
print(json.dumps(results))
"""

RECIPE = """\
model:
  name_or_path: {tiny}
  pooling: cls_before_pooler
objective:
  name: simcse_unsup
  temperature: 0.05
data:
  kind: text
  path: {corpus}
train:
  batch_size: 8
  max_steps: 2
eval:
  at_end: false
checkpoint:
  every_steps: 0
logging:
  progress_bar: false
  tensorboard: false
output_dir: {out}
"""

# (name, recipe edit (old, new) or None, extra argv, expected text, expected recipe line or None)
TRAIN_CASES = [
    ("yaml syntax", ("  pooling: cls_before_pooler", "  pooling: cls: x"), [], "not valid YAML: mapping values are not allowed here", 3),
    ("unknown section", ("train:", "trian:"), [], "unknown option 'trian' (did you mean train?)", 10),
    ("unknown key", ("  batch_size: 8", "  bach_size: 8"), [], "did you mean batch_size?", 11),
    ("wrong type", ("  max_steps: 2", "  max_steps: many"), [], "train.max_steps must be a whole number", 12),
    ("objective typo", ("  temperature: 0.05", "  temprature: 0.05"), [], "'temprature' (did you mean temperature?)", 6),
    ("objective name", ("  name: simcse_unsup", "  name: simcse"), [], "unknown objective 'simcse'", 5),
    ("data kind", ("  kind: text", "  kind: txt"), [], "unknown data.kind 'txt' (did you mean text?)", 8),
    ("objective vs data", ("  name: simcse_unsup", "  name: pairs"), [], "consumes PairBatch batches but data.kind 'text'", None),
    ("lr not a number", None, ["--train.lr", "abc"], "--train.lr must be a number, got 'abc'", None),
    ("negative lr", None, ["--train.lr", "-1e-5"], "train.lr must be > 0", None),
    ("batch 0", None, ["--train.batch_size", "0"], "train.batch_size must be >= 1", None),
    ("batch 2.5", None, ["--train.batch_size", "2.5"], "--train.batch_size must be a whole number", None),
    ("max_seq_length -5", None, ["--model.max_seq_length", "-5"], "model.max_seq_length must be >= 1", None),
    ("max_seq_length 0", None, ["--model.max_seq_length", "0"], "model.max_seq_length must be >= 1, got 0", None),
    ("data max_seq_length", None, ["--data.max_seq_length=0"], "data.max_seq_length must be >= 1", None),
    ("pooling", None, ["--model.pooling", "bogus"], "--model.pooling must be one of 'cls'", None),
    ("precision", None, ["--train.mixed_precision", "fp8"], "must be one of 'no', 'fp16', 'bf16'", None),
    ("warmup ratio", None, ["--train.warmup_ratio", "1.5"], "warmup_ratio must be in [0, 1)", None),
    ("warmup both", None, ["--train.warmup_steps", "10", "--train.warmup_ratio", "0.1"], "not both", None),
    ("grad_accum", None, ["--train.grad_accum", "0"], "train.grad_accum must be >= 1", None),
    ("mini batch", None, ["--train.mini_batch_size", "-1"], "train.mini_batch_size must be >= 0", None),
    ("eval every", None, ["--eval.every_steps", "-1"], "must be >= 0", None),
    ("patience", None, ["--eval.patience", "3"], "eval.patience needs periodic evaluation", None),
    ("metric", None, ["--eval.metric", "stbs"], "eval.metric 'stbs' (did you mean stsb?)", None),
    ("eval mode", None, ["--eval.mode", "final"], "--eval.mode must be one of 'dev', 'test'", None),
    ("log every", None, ["--logging.log_every", "0"], "logging.log_every must be >= 1", None),
    ("data path", ("  path: {corpus}", "  path: {corpus}x"), [], "no such file or folder", 9),
    ("shuffle buffer", None, ["--data.shuffle_buffer", "-1"], "data.shuffle_buffer must be >= 0", None),
    ("epochs", None, ["--data.epochs", "0"], "data.epochs must be >= 1", None),
    ("sts data dir", None, ["--eval.at_end", "true", "--eval.data_dir", "/nonexistent/sts"], "does not exist", None),
    ("--data-dir alias", None, ["--eval.at_end", "true", "--data-dir", "/nonexistent/x"], "/nonexistent/x does not exist", None),
    ("earlier run", None, [], "already holds a run", None),
    ("output is a file", None, ["--output_dir", "{recipe}"], "exists and is not a folder", None),
    ("resume path", None, ["--resume_from", "/nonexistent/ckpt"], "resume_from: /nonexistent/ckpt is not a directory", None),
    ("temperature 0", None, ["--objective.temperature", "0"], "temperature must be > 0", None),
    ("mlm probability", None, ["--objective.mlm_probability", "1.5"], "mlm_probability must be in (0, 1)", None),
    ("dedup", None, ["--objective.dedup", "drop"], "option dedup must be one of 'mask', 'none', got 'drop'", None),
    ("stray argument", None, ["extra.yaml"], "unexpected argument 'extra.yaml'", None),
    ("config missing", None, ["--config", "/nonexistent/r.yaml"], "recipe /nonexistent/r.yaml not found", None),
    ("option without value", None, ["--train.lr"], "--train.lr needs a value", None),
    ("stage key", None, ["--stages", "[{{objectiv: {{name: pairs}}}}]"], "'objectiv' (did you mean objective?)", None),
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir, shared_data, senteval_dir):
    """A recipe, and an output folder holding an earlier run (its model must survive)."""
    from contrasent.cli.main import main

    root = tmp_path_factory.mktemp("mistakes")
    out = root / "run"
    fields = {"tiny": tiny_bert_dir, "corpus": shared_data / "corpus" / "wiki1m-head.txt",
              "out": out, "recipe": root / "good.yaml"}  # fmt: skip
    (root / "good.yaml").write_text(RECIPE.format(**fields))
    assert main(["train", str(root / "good.yaml")]) == 0
    fields["index"] = root / "idx"  # a real index, for the search options checked after it
    (root / "few.txt").write_text("one text\nanother text\n")
    build = ["index", "build", "--model", str(tiny_bert_dir), "--input", str(root / "few.txt")]
    assert main([*build, "--output", str(fields["index"])]) == 0
    fields["qindex"] = root / "qidx"  # a binary index without float rows
    assert main([*build, "--output", str(fields["qindex"]), "--quantize", "binary"]) == 0
    return root, fields


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _run_all(cases: list[list[str]], cwd: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _other_cases(fields: dict, tiny: Path) -> list[tuple[str, list[str], str]]:
    folder = str(fields["out"])
    return [
        ("eval missing model", ["eval", "--model", "/nonexistent/model"], "model path /nonexistent/model does not exist"),
        ("eval pooling", ["eval", "--model", str(tiny), "--pooling", "bogus"], "--pooling must be one of"),
        ("eval task", ["eval", "--model", str(tiny), "--tasks", "sts99"], "unknown task 'sts99'"),
        ("eval transfer task", ["eval", "--model", str(tiny), "--tasks", "MR,bogus"], "unknown task 'bogus': choose from sts, transfer, full"),
        ("eval mode", ["eval", "--model", str(tiny), "--mode", "quick"], "--mode must be one of 'dev', 'test', 'fasttest'"),
        ("eval plots file", ["eval", "--model", str(tiny), "--plots", str(fields["corpus"])], "is a file; give a folder"),
        ("eval empty tasks", ["eval", "--model", str(tiny), "--tasks", ","], "no task selected by --tasks"),
        ("eval dev task", ["eval", "--model", str(tiny), "--mode", "dev", "--tasks", "sts12"], "STS12 has no dev split"),
        ("eval output folder", ["eval", "--model", str(tiny), "--output", folder], "is a folder; give a file name"),
        ("eval batch", ["eval", "--model", str(tiny), "--batch_size", "0"], "--batch_size must be >= 1"),
        ("eval data dir", ["eval", "--model", str(tiny), "--data-dir", "/nonexistent/d"], "/nonexistent/d does not exist"),
        ("eval typo", ["eval", "--modle", str(tiny)], "unknown option --modle (did you mean model?)"),
        ("eval max length", ["eval", "--model", str(tiny), "--max_seq_length", "-5"], "--max_seq_length must be >= 1"),
        ("embed no input", ["embed", "--model", str(tiny)], "embed needs --input FILE and --output FILE (.npy, .parquet or .jsonl)"),
        ("embed missing input", ["embed", "--model", str(tiny), "--input", "/nonexistent/in.txt", "--output", "x.npy"], "--input /nonexistent/in.txt: no such file"),
        ("embed output folder", ["embed", "--model", str(tiny), "--input", str(fields["corpus"]), "--output", folder], "is a folder"),
        ("report no folder", ["report"], "report needs a run folder: contrasent report RUN_DIR"),
        ("report missing", ["report", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
        ("report a model", ["report", f"{folder}/final"], "is a saved model, not a training run folder"),
        ("report not a run", ["report", str(Path(folder).parent)], "is not a training run folder"),
        ("report a file", ["report", str(fields["corpus"])], "is a file, not a training run folder"),
        ("report two folders", ["report", folder, folder], "unexpected argument"),
        ("report typo", ["report", folder, "--checkpoint"], "unknown option --checkpoint (did you mean checkpoints?)"),
        *_tool_cases(fields, tiny),
        ("unknown command", ["trian", "x.yaml"], "unknown command 'trian' (did you mean train?)"),
        ("help section", ["train", "--help", "trian"], "no help section 'trian' (did you mean train?)"),
    ]  # fmt: skip


def _tool_cases(fields: dict, tiny: Path) -> list[tuple[str, list[str], str]]:
    """embed (formats, shards), embed merge, index build, search, export, --backend onnx."""
    folder, corpus, recipe = str(fields["out"]), str(fields["corpus"]), str(fields["recipe"])
    embed = ["embed", "--model", str(tiny), "--input", corpus, "--output"]
    idx, q = str(fields["index"]), ["search", "--index", str(fields["index"]), "a query"]
    build = ["index", "build", "--model", str(tiny), "--input", corpus, "--output"]
    return [
        ("embed suffix", [*embed, "x.csv"], "--output x.csv: unknown format; use a name ending in .npy, .parquet, .jsonl"),
        ("embed shard", [*embed, "x.npy", "--shard", "2/2"], "--shard 2/2: need 0 <= I < N"),
        ("embed shard form", [*embed, "x.npy", "--shard", "half"], "--shard must look like I/N"),
        ("embed text in npy", [*embed, "x.npy", "--with_text", "true"], "--with_text needs a .parquet or .jsonl"),
        ("embed chunk lines", [*embed, "x.npy", "--chunk_lines", "0"], "--chunk_lines must be >= 1"),
        ("embed input folder", ["embed", "--model", str(tiny), "--input", folder, "--output", "x.npy"], "is a folder; give a text file"),
        ("merge no output", ["embed", "merge"], "embed merge needs --output FILE"),
        ("merge no shards", ["embed", "merge", "--output", "none.npy"], "no shard folders none.npy.shard-*-of-*"),
        ("index no action", ["index", "--model", str(tiny)], "give an action: index build"),
        ("index build no output", ["index", "build", "--model", str(tiny), "--input", corpus], "index build needs --input FILE and --output DIR"),
        ("index build onto file", [*build, recipe], "exists and is a file; give a folder"),
        ("index build onto run", [*build, folder], "is not an index folder (no index.json); refusing"),
        ("index build embeddings", [*build, "idx2", "--embeddings", "/nonexistent/e.npy"], "--embeddings /nonexistent/e.npy: no such file"),
        ("index build engine", [*build, "idx2", "--engine", "annoy"], "--engine must be one of 'auto', 'exact', 'faiss'"),
        ("search no index", ["search", "a query"], "search needs --index DIR"),
        ("search not an index", ["search", "--index", folder, "a query"], "is not a contrasent index (no index.json)"),
        ("search no query", ["search", "--index", idx], "at least one QUERY argument or --queries FILE"),
        ("search both", [*q, "--queries", corpus], "not both"),
        ("search empty query", ["search", "--index", idx, "ok", " "], "query 2 is empty"),
        ("search queries file", ["search", "--index", idx, "--queries", "/nonexistent/q.txt"], "--queries /nonexistent/q.txt: no such file"),
        ("search top_k", [*q, "--top_k", "0"], "--top_k must be >= 1, got 0"),
        ("search threshold", [*q, "--threshold", "2"], "--threshold is a cosine in [-1, 1], got 2.0"),
        ("search output suffix", [*q, "--output", "hits.json"], "--output hits.json: unknown format; use a name ending in .jsonl"),
        ("search nprobe", [*q, "--nprobe", "0"], "--nprobe must be >= 1"),
        ("export no output", ["export", str(tiny)], "export needs --output DIR"),
        ("export onto run", ["export", str(tiny), "--output", folder], "is not a model folder (no modules.json)"),
        ("export format", ["export", str(tiny), "--output", "o", "--format", "tflite"], "--format must be one of 'onnx'"),
        ("export quantize", ["export", str(tiny), "--output", "o", "--quantize", "int4"], "--quantize must be one of 'int8'"),
        ("export opset", ["export", str(tiny), "--output", "o", "--opset", "9"], "--opset must be in"),
        ("onnx backend on torch model", ["eval", "--model", str(tiny), "--backend", "onnx"], "no onnx/contrasent_onnx.json"),
        ("file_name without onnx", ["eval", "--model", str(tiny), "--file_name", "model.onnx"], "--file_name picks an ONNX file: it needs --backend onnx"),
        ("embed dim too large", [*embed, "x.npy", "--dim", "64"], "--dim 64: larger than the model's embedding dimension 32"),
        ("eval dims", ["eval", "--model", str(tiny), "--dims", "16,x"], "--dims: 'x' is not a positive number of dimensions"),
        ("eval dims too large", ["eval", "--model", str(tiny), "--tasks", "stsb", "--dims", "8,64"], "--dims 64: larger than the model's embedding dimension 32"),
        ("search dim", [*q, "--dim", "0"], "--dim must be >= 1, got 0"),
        *_quantized_cases(fields, build, q),
    ]  # fmt: skip


def _quantized_cases(
    fields: dict, build: list[str], q: list[str]
) -> list[tuple[str, list[str], str]]:
    """index build --quantize and search over a quantized index."""
    qq = ["search", "--index", str(fields["qindex"]), "a query"]
    return [
        ("keep_float alone", [*build, "idx2", "--keep_float", "true"], "--keep_float keeps float rows beside quantized codes: add --quantize"),
        ("quantize faiss", [*build, "idx2", "--quantize", "int8", "--engine", "faiss"], "--engine faiss is for float indexes"),
        ("quantize kind", [*build, "idx2", "--quantize", "int4"], "--quantize must be one of 'binary', 'int8'"),
        ("rescore float index", [*q, "--rescore_k", "10"], "is a float index (exact scores already)"),
        ("rescore below top_k", [*qq, "--rescore_k", "2"], "--rescore_k 2 must be >= --top_k 5"),
        ("rescore without floats", [*qq, "--rescore_k", "10", "--rescore_by", "float"], "this index keeps no float embeddings (build it with --keep_float)"),
        ("quantized dim", [*qq, "--dim", "8"], "holds binary codes of dim 32, which cannot be cut; build the index with --dim N --quantize"),
        ("quantized engine", [*qq, "--engine", "exact"], "is a quantized index, searched over its codes"),
        ("quantized threshold", [*qq, "--threshold", "0.5"], "--threshold is a cosine: on a quantized index it needs rescoring"),
    ]  # fmt: skip


def test_forty_mistakes_one_line_each_and_nothing_changed(setup, tiny_bert_dir):
    root, fields = setup
    before = _snapshot(fields["out"])
    good = (root / "good.yaml").read_text()
    runs, expect = [], []
    for i, (name, edit, extra, text, line) in enumerate(TRAIN_CASES):
        recipe = root / f"case{i}.yaml"
        content = good
        if edit is not None:
            old, new = (part.format(**fields) for part in edit)
            assert old in content, name
            content = content.replace(old, new, 1)
        recipe.write_text(content)
        args = [a.format(**fields) for a in extra]
        runs.append(["train", str(recipe), *args])
        expect.append((name, text, f"{recipe}:{line}:" if line else None))
    for name, argv, text in _other_cases(fields, tiny_bert_dir):
        runs.append(argv)
        expect.append((name, text, None))
    assert len(runs) >= 40
    for (name, text, where), result in zip(expect, _run_all(runs, root), strict=True):
        err = result["stderr"]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert result["code"] == 2, (name, err)
        assert "Traceback" not in err, (name, err)
        assert len(lines) == 1, (name, lines)
        assert text in lines[0], (name, lines[0])
        if where:
            assert where in lines[0], (name, lines[0])
        assert _snapshot(fields["out"]) == before, name
