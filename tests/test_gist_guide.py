"""GISTEmbed's guided in-batch mask for ``pairs`` (``objective.guide_model``): a constructed batch
with a known duplicate (a paraphrase, so masking by text cannot catch it), the mask by hand, and
the loss against sentence-transformers' ``GISTEmbedLoss`` on the same models and batch."""

from __future__ import annotations

import pytest
import torch

from contrasent.data.batches import PairBatch
from contrasent.model.encoder import Encoder
from contrasent.objectives import build_objective
from contrasent.objectives.inbatch import guide_mask

ANCHORS = ["how do I bake bread at home", "what is the capital of france", "is green tea healthy",
           "who wrote hamlet", "baking bread at home"]  # fmt: skip
POSITIVES = ["a simple guide to making a loaf", "paris is the capital of france",
             "green tea has health benefits", "shakespeare wrote hamlet",
             "how to bake bread at home"]  # fmt: skip
NEGATIVES = ["the stock market fell", "london is in england", "coffee is bitter",
             "macbeth is a play", "a recipe for pasta"]  # fmt: skip
# row 4 repeats row 0's request: its positive ("how to bake bread at home") is closer to row 0's
# anchor than row 0's own positive is, a false negative that masking by text cannot catch


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert_dir, minilm_dir):
    tiny = tmp_path_factory.mktemp("gist") / "student"
    Encoder.from_pretrained(tiny_bert_dir, pooling="mean", device="cpu").save(tiny)
    return tiny, minilm_dir


def test_guide_masks_the_known_duplicate_and_nothing_true(models):
    student, guide_dir = models
    enc = Encoder.from_pretrained(student, device="cpu").eval()
    guided = build_objective("pairs", enc, dedup="none", guide_model=str(guide_dir))
    guide = Encoder.from_pretrained(guide_dir, device="cpu")
    a = torch.as_tensor(guide.encode(ANCHORS, normalize=True))
    p = torch.as_tensor(guide.encode(POSITIVES, normalize=True))
    mask = guide_mask(a, p, torch.arange(5), 0.0)
    assert mask[0, 4]  # the known duplicate
    assert mask.sum() == 1  # and no true negative lost
    # with the mask the duplicate no longer counts as a negative: a lower loss than unguided
    plain = build_objective("pairs", enc, dedup="none")
    batch = PairBatch(ANCHORS, POSITIVES)
    with torch.no_grad():
        assert guided(enc, batch)["loss"] < plain(enc, batch)["loss"]


@pytest.mark.parametrize("negatives", [False, True])
def test_loss_equals_gist_embed_loss(models, negatives):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    student, guide_dir = models
    columns = [ANCHORS, POSITIVES] + ([NEGATIVES] if negatives else [])
    st = SentenceTransformer(str(student), device="cpu").eval()
    st_guide = SentenceTransformer(str(guide_dir), device="cpu")
    reference = GISTEmbedLoss(st, st_guide, temperature=0.05, contrast_anchors=False,
                              contrast_positives=False)  # fmt: skip
    theirs = reference([st.tokenize(c) for c in columns], None)

    enc = Encoder.from_pretrained(student, device="cpu").eval()
    objective = build_objective("pairs", enc, dedup="none", temperature=0.05,
                                guide_model=str(guide_dir))  # fmt: skip
    batch = PairBatch(ANCHORS, POSITIVES, [NEGATIVES] if negatives else [])
    ours = objective(enc, batch)["loss"]
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)
