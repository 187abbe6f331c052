"""ConSERT's embedding-level views: the exact effect of each pure function and of the parser.

Counts are checked exactly per draw (the reference cuts ``int(n * rate)`` items per row), the
uniformity of the choice statistically over many draws (each real item must be cut with
probability ``k / n``), and everything else (padding, mask, token ids, determinism) exactly.
The functions take an optional generator (the tests seed one); the view classes draw from
torch's global generator, as training does (the gradient cache replays it).
"""

from __future__ import annotations

import math

import pytest
import torch

from contrasent.augment import views as V
from contrasent.augment.embedding import (
    AdversarialPerturbation,
    EmbeddingDropout,
    FeatureCutoff,
    NoAugmentation,
    SpanCutoff,
    TokenCutoff,
    TokenShuffle,
    check_views,
    parse_view,
)
from contrasent.core.errors import UserError

# right padding (as HF tokenizers do) and one left-padded row; lengths 7, 12, 3, 10
LENGTHS = [7, 12, 3, 10]
T, H = 12, 40


def right_mask(lengths=LENGTHS, t=T) -> torch.Tensor:
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(LENGTHS), T, H, generator=g) + 3.0  # no exact zeros
    return emb, right_mask()


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def seeded(seed):
    """The view classes draw from the global generator: seed it."""
    torch.manual_seed(seed)
    return seed


# ------------------------------------------------------------------ token shuffle
@pytest.mark.parametrize("start", [0, 2])  # BERT ids 0.., RoBERTa ids padding_idx+1 = 2..
def test_shuffle_permutes_real_positions_and_keeps_padding(start):
    mask = right_mask()
    pos = start + torch.arange(T).expand(len(LENGTHS), T)
    pos = torch.where(mask.bool(), pos, torch.full_like(pos, 1))  # RoBERTa pads at padding_idx
    seeded(3)
    out = TokenShuffle().positions(pos, mask)
    assert out.dtype == pos.dtype and out.shape == pos.shape
    for i, n in enumerate(LENGTHS):
        assert sorted(out[i, :n].tolist()) == pos[i, :n].tolist()  # a permutation of the real
        assert out[i, n:].tolist() == pos[i, n:].tolist()  # padding untouched
    assert pos[0, 0] == start  # input not modified in place


def test_shuffle_left_padding_and_broadcast_ids():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pos = torch.arange(6)[None, :]  # [1, T] as HF's buffer: broadcast to the batch
    out = V.shuffle_positions(pos, mask, gen(0))
    assert out[0, :2].tolist() == [0, 1]
    assert sorted(out[0, 2:].tolist()) == [2, 3, 4, 5]
    assert sorted(out[1].tolist()) == list(range(6))


def test_shuffle_is_uniform_over_permutations_including_special_tokens():
    # [CLS] (slot 0) and [SEP] (slot n-1) are shuffled with the rest, as in the reference
    mask, pos = right_mask([4], 6), torch.arange(6)[None, :]
    g = gen(7)
    counts: dict[tuple, int] = {}
    draws = 4800
    for _ in range(draws):
        key = tuple(V.shuffle_positions(pos, mask, g)[0, :4].tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == math.factorial(4)
    expected = draws / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 49.7  # 23 degrees of freedom, p = 0.001


# ------------------------------------------------------------------ token cutoff
def test_token_cutoff_zeroes_exactly_int_n_rate_real_rows():
    emb, mask = batch()
    rate = 0.15
    seeded(5)
    out = TokenCutoff(rate).embeddings(emb, mask)
    for i, n in enumerate(LENGTHS):
        zero_rows = out[i].eq(0).all(-1)
        assert int(zero_rows.sum()) == int(n * rate)  # 1, 1, 0, 1
        assert not zero_rows[n:].any()
        kept = ~zero_rows
        assert torch.equal(out[i][kept], emb[i][kept])  # the other rows unchanged
    assert out.data_ptr() != emb.data_ptr() and not emb.eq(0).any()


def test_token_cutoff_chooses_rows_uniformly():
    mask = right_mask([10], 10)
    g, draws = gen(11), 4000
    hits = torch.zeros(10)
    for _ in range(draws):
        hits += V.token_cutoff_mask(mask, 0.3, g)[0].float()
    assert hits.sum() == 3 * draws  # exactly 3 rows each draw
    p = 0.3
    sd = math.sqrt(draws * p * (1 - p))
    assert ((hits - draws * p).abs() < 4.5 * sd).all(), hits  # row 0 ([CLS]) included


# ------------------------------------------------------------------ feature cutoff
def test_feature_cutoff_zeroes_whole_columns_per_row():
    emb, mask = batch()
    rate = 0.2
    seeded(2)
    out = FeatureCutoff(rate).embeddings(emb, mask)
    k = int(H * rate)
    cols = []
    for i, n in enumerate(LENGTHS):
        zero_cols = out[i, :n].eq(0).all(0)
        assert int(zero_cols.sum()) == k
        assert not out[i, :n][:, ~zero_cols].eq(0).any()  # other columns untouched
        assert torch.equal(out[i, n:], emb[i, n:])  # padding untouched
        cols.append(zero_cols)
    assert not all(torch.equal(cols[0], c) for c in cols[1:])  # drawn per row


def test_feature_cutoff_rate_over_many_draws():
    mask = right_mask([5], 5)
    g, draws, h = gen(4), 3000, 20
    hits = torch.zeros(h)
    for _ in range(draws):
        hits += V.feature_cutoff_mask(mask, h, 0.25, g)[0].float()
    assert hits.sum() == 5 * draws
    sd = math.sqrt(draws * 0.25 * 0.75)
    assert ((hits - draws * 0.25).abs() < 4.5 * sd).all(), hits


# ------------------------------------------------------------------ dropout
def test_dropout_zeroes_exact_count_without_rescaling():
    emb, mask = batch()
    rate = 0.2
    seeded(8)
    out = EmbeddingDropout(rate).embeddings(emb, mask)
    for i, n in enumerate(LENGTHS):
        zeros = out[i].eq(0)
        assert int(zeros.sum()) == int(n * H * rate)
        assert not zeros[n:].any()
        assert torch.equal(out[i][~zeros], emb[i][~zeros])  # kept elements NOT scaled by 1/0.8
    # element-wise, not whole rows or columns
    z = out[1, :12].eq(0)
    assert not z.all(-1).any() and not z.all(0).any()


def test_dropout_rate_over_many_draws():
    mask = right_mask([3, 2], 4)
    g, draws = gen(9), 2000
    hits = torch.zeros(2, 4, 6)
    for _ in range(draws):
        hits += V.dropout_mask(mask, 6, 0.2, g).float()
    assert hits[0].sum() == draws * int(18 * 0.2) and hits[1].sum() == draws * int(12 * 0.2)
    p0 = int(18 * 0.2) / 18
    sd = math.sqrt(draws * p0 * (1 - p0))
    assert ((hits[0, :3] - draws * p0).abs() < 4.5 * sd).all()
    assert hits[0, 3:].sum() == 0 and hits[1, 2:].sum() == 0


# ------------------------------------------------------------------ span
def test_span_keeps_one_window_of_int_n_one_minus_rate():
    emb, mask = batch()
    rate = 0.3
    seeded(6)
    keep = V.span_keep_mask(mask, rate)
    seeded(6)
    out = SpanCutoff(rate).embeddings(emb, mask)
    for i, n in enumerate(LENGTHS):
        idx = keep[i].nonzero()[:, 0].tolist()
        assert len(idx) == max(int(n * (1 - rate)), 1)
        assert idx == list(range(idx[0], idx[0] + len(idx)))  # contiguous
        assert idx[-1] < n
        zero_rows = out[i].eq(0).all(-1)
        assert zero_rows[:n].tolist() == (~keep[i][:n]).tolist()
        assert torch.equal(out[i, n:], emb[i, n:])


def test_span_start_uniform():
    mask = right_mask([10], 10)
    g, draws = gen(12), 3000
    starts = torch.zeros(4)  # keep 7 of 10: start in 0..3
    for _ in range(draws):
        starts[V.span_keep_mask(mask, 0.3, g)[0].long().argmax()] += 1
    sd = math.sqrt(draws * 0.25 * 0.75)
    assert ((starts - draws / 4).abs() < 4.5 * sd).all(), starts


# ------------------------------------------------------------------ determinism, none
@pytest.mark.parametrize(
    "view", [TokenShuffle(), TokenCutoff(0.15), FeatureCutoff(0.2), EmbeddingDropout(0.2)]
)
def test_views_draw_from_the_global_generator(view):
    """Same global seed, same view (what the gradient cache's replay relies on); another seed,
    another view; the mask and the inputs are never changed."""
    emb, mask = batch()
    pos = torch.arange(T).expand(len(LENGTHS), T)
    draw = []
    for seed in (21, 21, 23):
        torch.manual_seed(seed)
        draw.append((view.positions(pos, mask), view.embeddings(emb, mask)))
    (a, b, c) = draw
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    assert torch.equal(mask, right_mask()) and not emb.eq(0).any()


def test_functions_are_pure_given_a_generator():
    emb, mask = batch()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = V.embedding_dropout(emb, mask, 0.2, gen(5))
    assert torch.equal(torch.get_rng_state(), state)  # a given generator: global one untouched
    assert torch.equal(a, V.embedding_dropout(emb, mask, 0.2, gen(5)))
    pos = torch.arange(T).expand(4, T)
    assert torch.equal(
        V.shuffle_positions(pos, mask, gen(2)), V.shuffle_positions(pos, mask, gen(2))
    )


def test_none_and_non_shuffle_views_keep_positions():
    emb, mask = batch()
    pos = torch.arange(T).expand(4, T)
    assert NoAugmentation().embeddings(emb, mask) is emb
    for view in (NoAugmentation(), TokenCutoff(0.1), FeatureCutoff(0.1), EmbeddingDropout(0.1)):
        assert view.positions(pos, mask) is pos
    assert TokenShuffle().embeddings(emb, mask) is emb


def test_rate_zero_is_identity():
    emb, mask = batch()
    for fn in (V.token_cutoff, V.feature_cutoff, V.embedding_dropout):
        assert torch.equal(fn(emb, mask, 0.0, gen()), emb)


def test_bad_rates_and_masks_are_refused():
    with pytest.raises(ValueError, match="rate must be in"):
        V.token_cutoff_mask(right_mask(), 1.0)
    with pytest.raises(ValueError, match="attention_mask must be"):
        V.token_cutoff_mask(torch.ones(3), 0.1)


# ------------------------------------------------------------------ adversarial (FGV)
def test_fgv_perturbation_is_per_token_unit_gradient_times_epsilon():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    noise = V.fgv_perturbation(grad, 0.5, mask)
    for i in range(2):
        for t in range(4):
            v = grad[i, t]
            want = 0.5 * v / (v.norm() + 1e-10) if mask[i, t] else torch.zeros(6)
            torch.testing.assert_close(noise[i, t], want)
    assert not noise.requires_grad
    zero = V.fgv_perturbation(torch.zeros(1, 2, 3), 1.0)  # zero gradient: zero noise, no NaN
    assert torch.equal(zero, torch.zeros(1, 2, 3))


def test_adversarial_view_adds_the_noise_and_needs_it():
    emb, mask = batch()
    view = parse_view({"name": "adversarial", "epsilon": 0.01})
    with pytest.raises(RuntimeError, match="perturbation"):
        view.embeddings(emb, mask)
    grad = torch.randn_like(emb)
    ready = view.with_grad(grad, mask)
    out = ready.embeddings(emb, mask)
    torch.testing.assert_close(out - emb, V.fgv_perturbation(grad, 0.01, mask))
    assert view.noise is None  # with_grad returns a new view
    base = torch.randn_like(emb)  # the reference's form: the plain view's output + noise
    replaced = view.with_grad(grad, mask, base=base).embeddings(emb, mask)
    torch.testing.assert_close(replaced, base + V.fgv_perturbation(grad, 0.01, mask))
    with pytest.raises(UserError, match="supervised loss"):
        check_views([TokenShuffle(), view], supervised=False, where="recipe.yaml")
    check_views([TokenShuffle(), view], supervised=True, where="recipe.yaml")


# ------------------------------------------------------------------ parser
def test_parse_view_names_defaults_and_options():
    assert isinstance(parse_view("shuffle"), TokenShuffle)
    assert isinstance(parse_view("none"), NoAugmentation)
    assert parse_view("token_cutoff").rate == 0.15
    assert parse_view("feature_cutoff").rate == 0.2
    assert parse_view("dropout").rate == 0.2
    assert parse_view({"name": "feature_cutoff", "rate": 0.1}).rate == 0.1
    assert parse_view({"name": "span", "rate": 0.2}).config_dict() == {
        "name": "span_cutoff",
        "rate": 0.2,
    }
    adv = parse_view({"name": "adv", "epsilon": 1})
    assert isinstance(adv, AdversarialPerturbation) and adv.epsilon == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shufle", "unknown view 'shufle'; did you mean 'shuffle'"),
        ("feature-cutoff", "did you mean 'feature_cutoff'"),
        ("rotate", "unknown view 'rotate' \\(known: none, shuffle"),
        ({"name": "token_cutoff", "rate": 1.0}, "rate must be in \\[0, 1\\), got 1.0"),
        ({"name": "dropout", "rate": -0.1}, "rate must be in \\[0, 1\\)"),
        ({"name": "dropout", "rate": "0.1"}, "rate must be a number"),
        ({"name": "span_cutoff"}, "needs a rate"),
        ({"name": "shuffle", "rate": 0.1}, "takes no options"),
        ({"name": "token_cutoff", "ratio": 0.1}, "takes only \\['rate'\\]"),
        ({"name": "adversarial"}, "needs an epsilon"),
        ({"name": "adversarial", "epsilon": 0}, "must be > 0"),
        ({"rate": 0.1}, "needs a 'name'"),
        (3, "a view is a name or a mapping"),
    ],
)
def test_parse_view_errors(spec, message):
    with pytest.raises(UserError, match=f"cfg.yaml: views\\[0\\]: .*{message}"):
        parse_view(spec, where="cfg.yaml: views[0]")
