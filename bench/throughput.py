"""Distance to the machine's limit: tokens each training step runs, its FLOPs and a matmul peak.

Shared by ``bench/train.py`` and ``bench/profile_step.py``.

:class:`PassCounter` installs torch's global module forward hooks and sees every call of a Hugging
Face model (the outermost ``PreTrainedModel`` of a call: a ``BertLMHeadModel`` decoder counts once,
not also its inner ``BertModel``), on both sides of a benchmark alike. Per call it records the
real tokens (``attention_mask`` ones), the token slots run (real + padding) and the model FLOPs.

FLOPs are counted analytically, useful work only (real tokens; padding is waste, not work), for a
BERT-style stack with hidden size ``d``, FFN size ``f``, ``n`` layers:

* forward, per real token and layer: ``2 * (4 d^2 + 2 d f)`` (the Q, K, V, output and two FFN
  matmuls: 2 FLOPs per multiply-add of every weight);
* attention, per row of real length ``L`` and layer: ``4 L^2 d`` (``Q K^T`` and ``A V``);
* a decoder with cross-attention (TSDAE) adds per real target token and layer ``2 * 2 d^2`` (its
  query and output projections), per row and layer ``2 * 2 d^2 * M`` (key and value of the ``M``
  memory positions) and ``4 L M d`` (attention over them); ``M`` = 1 (TSDAE's memory is the
  sentence vector: the counter assumes it for every decoder);
* a language-model head adds per real token ``2 * (d^2 + d V)`` (transform and vocabulary
  projection, ``V`` = vocabulary size), for a decoder also where only its body is called
  (ours runs TSDAE's LM head apart, on the real label positions);
* a training step = 3x the forward (backward: gradients of inputs and of weights).

Embedding lookups, LayerNorm, softmax, GELU, pooling and the loss's similarity matrix are left
out (each < 1% here). The matmul peak is the best GFLOP/s of an fp32 ``torch.matmul`` shaped like
the model's FFN (``tokens x d`` by ``d x f``), timed on this machine with the current thread count:
the figure a step could reach if it were all matmul.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class Tally:
    """Sums over model calls since the last :meth:`PassCounter.take`."""

    calls: int = 0
    real: int = 0
    slots: int = 0
    flops: float = 0.0  # forward FLOPs of the calls (x3 for a training step)
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def padding(self) -> float:
        return 1.0 - self.real / self.slots if self.slots else 0.0


def _dims(config) -> tuple[int, int, int, int]:
    d = config.hidden_size
    f = getattr(config, "intermediate_size", 4 * d)
    n = config.num_hidden_layers
    return d, f, n, config.vocab_size


def call_flops(model, lengths: torch.Tensor, memory: int = 0) -> float:
    """Forward FLOPs of one call of a BERT-style ``model`` on rows of real ``lengths``."""
    d, f, n, vocab = _dims(model.config)
    lengths = lengths.to(torch.float64)
    tokens, rows = float(lengths.sum()), len(lengths)
    square = float((lengths**2).sum())
    flops = n * (2 * (4 * d * d + 2 * d * f) * tokens + 4 * square * d)
    decoder = memory and getattr(model.config, "add_cross_attention", False)
    if decoder:
        flops += n * (2 * 2 * d * d * tokens + 2 * 2 * d * d * memory * rows)
        flops += n * 4 * tokens * memory * d
    # a decoder is called whole (ST) or as its body, its LM head run apart on the real labels
    # (ours): its head is counted with it either way, per real input token
    if decoder or getattr(model, "get_output_embeddings", lambda: None)() is not None:
        flops += 2 * (d * d + d * vocab) * tokens
    return flops


class PassCounter:
    """Counts the tokens and FLOPs of every Hugging Face model call while installed.

    A call is seen where the model looks up its input ids (its word-embedding module; hooked on
    both sides alike: sentence-transformers calls its HF model's ``forward`` directly, past any
    hook on the model itself). Real tokens are the ids that are not the pad id. The owner of a
    lookup is the outermost HF model running at the time (a tied TSDAE decoder shares the
    encoder's embedding module). A model called with ``inputs_embeds`` (ours with
    ``length_buckets``: one lookup for all rows, outside any model call, then one call per
    bucket) is counted at that call instead, its real tokens from the attention mask.
    """

    def __init__(self) -> None:
        self.tally = Tally()
        self._stack: list = []
        self._seen: set[int] = set()
        self._owner: dict[int, object] = {}
        self._handles: list = []
        self._pending: tuple | None = None

    def __enter__(self) -> PassCounter:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module, args) -> None:
        from transformers import PreTrainedModel

        if id(module) not in self._seen:
            self._scan(module)
        if isinstance(module, PreTrainedModel):
            self._stack.append(module)

    def _post(self, module, args, output) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _scan(self, root) -> None:
        """Hook the word embeddings of every outermost HF model under ``root`` (once each)."""
        from transformers import PreTrainedModel

        inner: set[int] = set()
        for module in root.modules():
            if id(module) in self._seen:
                continue
            self._seen.add(id(module))
            if isinstance(module, PreTrainedModel) and id(module) not in inner:
                inner.update(id(m) for m in module.modules() if m is not module)
                words = module.get_input_embeddings()
                if words is not None and id(words) not in self._owner:
                    self._owner[id(words)] = module
                    self._handles.append(words.register_forward_pre_hook(self._lookup))
                    self._handles.append(
                        module.register_forward_pre_hook(self._embedded, with_kwargs=True)
                    )

    def _lookup(self, words, args) -> None:
        if not args:
            return
        self._commit()
        ids = args[0]
        owner = self._stack[0] if self._stack else self._owner[id(words)]
        pad = getattr(owner.config, "pad_token_id", None)
        real = ids.ne(pad) if pad is not None else torch.ones_like(ids, dtype=torch.bool)
        call = (owner, real.sum(dim=-1).reshape(-1).cpu(), ids.numel())
        if self._stack:
            self._count(*call)
        else:  # outside a model call (ST's direct forward, or ours before buckets): held back
            self._pending = call

    def _commit(self) -> None:
        if self._pending is not None:
            self._count(*self._pending)
            self._pending = None

    def _embedded(self, model, args, kwargs) -> None:
        embeds, mask = kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        if embeds is None or kwargs.get("input_ids") is not None or (args and args[0] is not None):
            return
        self._pending = None  # the lookup before it fed these calls: counted call by call
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        self._count(model, mask.sum(dim=-1).reshape(-1).cpu(), mask.numel())

    def _count(self, owner, lengths: torch.Tensor, slots: int) -> None:
        decoder = getattr(owner.config, "add_cross_attention", False)
        t = self.tally
        t.calls += 1
        t.real += int(lengths.sum())
        t.slots += slots
        t.flops += call_flops(owner, lengths, memory=1 if decoder else 0)
        name = type(owner).__name__
        t.by_model[name] = t.by_model.get(name, 0) + 1

    def take(self) -> Tally:
        self._commit()
        t, self.tally = self.tally, Tally()
        return t


def matmul_peak(
    d: int,
    f: int,
    tokens: int = 2048,
    seconds: float = 1.0,
    clock: str = "wall",
    precision: str = "fp32",
) -> float:
    """Best GFLOP/s of a ``[tokens, d] @ [d, f]`` matmul in ``precision`` (fp32, bf16, fp16)
    here (current threads, device), timed by ``clock``: ``wall`` or ``cpu`` (process CPU time:
    steadier on a shared CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(tokens, d, device=device, dtype=dtype)
    b = torch.randn(d, f, device=device, dtype=dtype)
    flops = 2.0 * tokens * d * f
    best = float("inf")
    now = time.perf_counter if clock == "wall" or device == "cuda" else time.process_time
    torch.matmul(a, b)  # warm-up (allocations, kernel choice)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or best == float("inf"):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = now()
        for _ in range(5):
            torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (now() - t0) / 5)
    return flops / best / 1e9


def machine_line() -> str:
    """The CPU (or GPU), its bf16 matmul level (AMX / AVX512-BF16 / none), the threads and
    how malloc treats freed memory (the same for both sides of a run: one process)."""
    from contrasent.core import hardware

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    kept = "keeps freed memory" if hardware._kept_memory else "glibc's default"
    return (
        f"device: {gpu or hardware.cpu_model(hardware.read_cpuinfo())}; CPU bf16 matmuls: "
        f"{hardware.cpu_bf16_level()}; torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), threads {torch.get_num_threads()}; "
        f"malloc {kept} (both sides)"
    )
