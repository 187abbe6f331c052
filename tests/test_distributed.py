"""Two gloo CPU processes with half a batch each == one process with the whole batch.

Each process embeds its half, the objective gathers embeddings (with gradient) and text ids,
computes the loss of its local rows and backpropagates; gradients are then all-reduced and
averaged as DDP does. Loss (averaged over processes) and every encoder gradient must equal the
single-process run (dropout off), in float64 to ~1e-10, far tighter than 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import gloo_group
from contrasent.core import distributed as D
from contrasent.data.batches import PairBatch, SentenceBatch

ANCHORS = ["how do I bake bread", "what is a cat", "bread baking guide", "cats are pets",
           "where is paris", "is tea healthy", "who wrote hamlet", "best way to learn piano"]  # fmt: skip
POSITIVES = ["bake bread at home", "cats are pets", "a guide to home baking", "a small dog",
             "paris is in france", "green tea is healthy", "bake bread at home", "practice scales daily"]  # fmt: skip
NEGATIVES = ["the stock market", "a small dog", "green tea", "a red car",
             "london is big", "coffee is bitter", "macbeth", "play the guitar"]  # fmt: skip
# dedup across processes: row 6 (process 1) repeats row 0's positive (process 0); row 3's
# anchor is row 1's positive; row 1's negative is row 3's positive.

CASES = {
    "pairs_neg_dedup": ("pairs", {"hard_negative_weight": 0.0}, "pairs_neg"),
    "pairs_symmetric": ("pairs", {"symmetric": True}, "pairs"),
    "simcse_sup": ("simcse_sup", {"hard_negative_weight": 0.5, "dedup": "mask"}, "pairs_neg"),
    "simcse_unsup": ("simcse_unsup", {}, "sentences"),
}


def make_batch(kind: str, rows: slice):
    if kind == "sentences":
        return SentenceBatch(ANCHORS[rows])
    negs = [NEGATIVES[rows]] if kind == "pairs_neg" else []
    return PairBatch(ANCHORS[rows], POSITIVES[rows], negs)


def run_case(
    tiny_dir: str, name: str, rows: slice, buckets: int = 1
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss of `rows` and the encoder's gradients (not yet averaged over processes);
    ``buckets``: the encoder's ``length_buckets`` (train.length_buckets)."""
    from contrasent.model.encoder import Encoder
    from contrasent.objectives import build_objective

    objective_name, options, kind = CASES[name]
    torch.manual_seed(0)  # same MLP init on every process and in the reference
    # float64 so that "equal" can be tested far below the 1e-5 asked: the random tiny BERT's
    # gradients (~1e-4) are sums of much larger terms that cancel, float32 leaves ~1e-6 noise
    enc = Encoder.from_pretrained(tiny_dir, pooling="cls_before_pooler", device="cpu").double()
    enc.eval()  # dropout off: the split must not change the embeddings
    enc.length_buckets = buckets
    obj = build_objective(objective_name, enc, **options)
    out = obj(enc, make_batch(kind, rows))
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters() if p.grad is not None}
    return out["loss"].item(), grads


def _worker(rank: int, world: int, tiny_dir: str, out_dir: str, buckets: int = 1) -> None:
    with gloo_group(rank, world, out_dir):
        assert D.rank() == rank and D.world_size() == world and D.is_distributed()
        results = {}
        half = len(ANCHORS) // world
        for name in CASES:
            rows = slice(rank * half, (rank + 1) * half)
            loss, grads = run_case(tiny_dir, name, rows, buckets)
            loss_t = torch.tensor([loss], dtype=torch.float64)
            dist.all_reduce(loss_t)
            for g in grads.values():  # DDP: average the gradients over processes
                dist.all_reduce(g)
                g /= world
            results[name] = (loss_t.item() / world, grads)
        # unequal slices are refused on every process with a clear message
        try:
            D.all_gather_with_grad(torch.zeros(rank + 1, 3))
            results["unequal"] = "no error"
        except ValueError as err:
            results["unequal"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def test_not_distributed_is_identity():
    t = torch.randn(3, 2, requires_grad=True)
    assert D.all_gather_with_grad(t) is t and D.all_gather_no_grad(t) is t
    assert D.rank() == 0 and D.world_size() == 1 and D.row_offset(3) == 0


@pytest.mark.parametrize("buckets", [1, 2], ids=["one-pass", "length-buckets"])
def test_two_processes_equal_one_process(tiny_bert_dir, tmp_path, buckets):
    """With ``train.length_buckets`` on the processes, against the one-pass single process."""
    mp.spawn(_worker, args=(2, str(tiny_bert_dir), str(tmp_path), buckets), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in range(2):
        assert "equal per-process batch slices" in per_rank[r]["unequal"]
    for name in CASES:
        ref_loss, ref_grads = run_case(str(tiny_bert_dir), name, slice(0, len(ANCHORS)))
        for r in range(2):
            loss, grads = per_rank[r][name]
            assert loss == pytest.approx(ref_loss, rel=1e-10), name
            assert grads.keys() == ref_grads.keys()
            for key, g in ref_grads.items():
                torch.testing.assert_close(
                    grads[key], g, atol=1e-12, rtol=1e-8, msg=f"{name}: {key}"
                )


def run_mlm_cache(tiny_dir: str, rows: slice, world: int, mini_batch: int | None):
    """Unsup SimCSE + MLM (dropout off): the loss record and encoder + head gradients of the
    batch's `rows` (its offset set as the loop's local slice sets it), through the gradient
    cache (`mini_batch`) or the plain step (None); gradients averaged over processes."""
    from contrasent.model.encoder import Encoder
    from contrasent.objectives import build_objective
    from contrasent.train.gradcache import gradcache_step

    torch.manual_seed(0)
    enc = Encoder.from_pretrained(tiny_dir, pooling="cls_before_pooler", device="cpu").double()
    enc.eval()
    obj = build_objective("simcse_unsup", enc, do_mlm=True, mlm_probability=0.3).double()
    batch = SentenceBatch(ANCHORS + POSITIVES, index=5).slice(rows.start, rows.stop)
    if mini_batch is None:
        record = obj(enc, batch)
        record["loss"].backward()
    else:
        record = gradcache_step(enc, obj, batch, mini_batch)
    D.average_gradients([*enc.parameters(), *obj.parameters()])
    named = [*enc.named_parameters(), *(("mlm." + n, p) for n, p in obj.mlm.named_parameters())]
    grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}
    parts = {k: v.detach() for k, v in record.items()}
    return parts, grads


def _mlm_worker(rank: int, world: int, tiny_dir: str, out_dir: str) -> None:
    with gloo_group(rank, world, out_dir):
        half = 16 // world
        parts, grads = run_mlm_cache(tiny_dir, slice(rank * half, (rank + 1) * half), world, 3)
        for v in parts.values():  # the loop logs the mean over processes
            dist.all_reduce(v)
            v /= world
        torch.save((parts, grads), Path(out_dir) / f"mlm{rank}.pt")


def test_mlm_under_cache_two_processes_equal_one_process(tiny_bert_dir, tmp_path):
    """SimCSE + MLM under the gradient cache (3 texts a pass) on 2 gloo processes == the plain
    step on one process with the global batch: masks are keyed per global row, the MLM loss is
    normalised by the global count of masked tokens, and every gradient (MLM head included) is
    averaged explicitly after the cache's passes."""
    mp.spawn(_mlm_worker, args=(2, str(tiny_bert_dir), str(tmp_path)), nprocs=2)
    ref_parts, ref_grads = run_mlm_cache(str(tiny_bert_dir), slice(0, 16), 1, None)
    assert ref_parts["mlm"].item() > 0 and any(k.startswith("mlm.") for k in ref_grads)
    for r in range(2):
        parts, grads = torch.load(tmp_path / f"mlm{r}.pt")
        for k in ("loss", "contrastive", "mlm"):
            assert parts[k].item() == pytest.approx(ref_parts[k].item(), rel=1e-9), k
        assert grads.keys() == ref_grads.keys()
        for key, g in ref_grads.items():
            torch.testing.assert_close(grads[key], g, atol=1e-12, rtol=1e-8, msg=key)


def test_a_rank_without_saved_rng_gets_its_own_reproducible_stream():
    """Resuming on more processes than saved: the new ranks are seeded from (seed, rank, step),
    not all from the same state."""
    from contrasent.train.runtime import reseed_missing_rank

    draws = {}
    for rank in (1, 2, 1):
        reseed_missing_rank(42, rank, step=10)
        draws.setdefault(rank, []).append(torch.rand(3))
    assert torch.equal(draws[1][0], draws[1][1])
    assert not torch.equal(draws[1][0], draws[2][0])
