"""sentence-transformers' ONNX backend, run in its own environment (the peer of our ONNX export).

sentence-transformers[onnx] needs optimum, which resolves only with transformers 4.57 /
sentence-transformers 5.x and breaks transformers 5 when installed beside it, so this script runs
in a separate venv (``bench/make_st_onnx_env.sh``) and talks to its caller through files and
stdin/stdout. It never imports contrasent.

    PY check MODEL_DIR SENTENCES.json OUT.npz [FILE_NAME ...]
        load MODEL_DIR with SentenceTransformer(..., backend="onnx") once per ONNX file
        (default onnx/model.onnx), embed the sentences, save {file_name: embeddings}
    PY serve SENTENCES.json THREADS
        benchmark server: one JSON command a line on stdin, one JSON answer a line on stdout:
        {"op": "export", "model": DIR, "out": CACHE_DIR, "int8_target": "avx512_vnni"}
        {"op": "load", "name": N, "model": DIR, "file_name": F | null, "backend": "onnx"|"torch"}
        {"op": "run", "name": N, "batch_size": 32}  -> {"wall": s, "cpu": s}
        {"op": "save", "name": N, "path": OUT.npy}    (embeddings of the last run)
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(model: str, file_name: str | None, threads: int | None, backend: str = "onnx"):
    from sentence_transformers import SentenceTransformer

    if backend == "torch":
        return SentenceTransformer(model, device="cpu")
    kwargs = {}
    if file_name:
        kwargs["file_name"] = file_name
    if threads:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        kwargs["session_options"] = so
    return SentenceTransformer(model, backend="onnx", device="cpu", model_kwargs=kwargs)


def check(model: str, sentences: str, out: str, files: list[str]) -> None:
    import numpy as np

    texts = json.loads(Path(sentences).read_text(encoding="utf-8"))
    result = {}
    for f in files or ["onnx/model.onnx"]:
        st = load(model, f, None)
        kind = type(st[0].auto_model).__name__
        if "ORT" not in kind:
            sys.exit(f"{f}: loaded as {kind}, not an ONNX Runtime model")
        result[f] = st.encode(texts, batch_size=16, convert_to_numpy=True)
    np.savez(out, **result)


def export(model: str, out: str, target: str) -> dict:
    """sentence-transformers' own ONNX export (optimum) and its int8 preset, cached in ``out``."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    int8 = f"onnx/model_{'quint8' if target == 'avx2' else 'qint8'}_{target}.onnx"
    if not (Path(out) / int8).is_file():
        st = SentenceTransformer(model, backend="onnx", device="cpu")
        st.save(out)
        export_dynamic_quantized_onnx_model(st, target, out)
    return {"fp32": "onnx/model.onnx", "int8": int8}


def serve(sentences: str, threads: int) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    texts = json.loads(Path(sentences).read_text(encoding="utf-8"))
    models, last = {}, {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "export":
            answer = export(cmd["model"], cmd["out"], cmd["int8_target"])
        elif op == "load":
            models[cmd["name"]] = load(
                cmd["model"], cmd.get("file_name"), threads, cmd.get("backend", "onnx")
            )
            answer = {"loaded": cmd["name"]}
        elif op == "run":
            st = models[cmd["name"]]
            wall, cpu = time.perf_counter(), time.process_time()
            emb = st.encode(texts, batch_size=cmd["batch_size"], convert_to_numpy=True)
            answer = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
            last[cmd["name"]] = emb
        elif op == "save":
            np.save(cmd["path"], np.asarray(last[cmd["name"]], dtype=np.float32))
            answer = {"saved": cmd["path"]}
        else:
            answer = {"error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
