"""TSDAE decoder (tied / untied) and reconstruction loss, against sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import build_tiny_bert
from contrasent.augment.text_noise import noise_text
from contrasent.core.errors import UserError
from contrasent.model.encoder import Encoder
from contrasent.objectives.tsdae_parts import (
    TSDAEDecoder,
    build_decoder,
    check_decoder_architecture,
    check_decoder_tokenizer,
    reconstruction_loss,
    reconstruction_loss_mean,
    reconstruction_row_losses,
    shift_targets,
    tokenize_targets,
)

ORIGINAL = ["a man is playing a guitar on the stage tonight", "the cat sleeps",
            "stocks fell sharply today after the report", "she is reading a long book"]  # fmt: skip


def noisy(texts: list[str], seed: int = 0) -> list[str]:
    return [noise_text(t, np.random.default_rng([seed, i])) for i, t in enumerate(texts)]


@pytest.fixture
def encoder(tiny_bert_dir: Path) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_dir, pooling="cls_before_pooler", device="cpu")


def targets(encoder: Encoder, texts=ORIGINAL) -> dict[str, torch.Tensor]:
    features, _ = tokenize_targets(encoder.tokenizer, texts, encoder.max_seq_length)
    return features


def loss_of(encoder: Encoder, decoder, src=None, tgt=None) -> torch.Tensor:
    src = encoder.tokenize(noisy(ORIGINAL)) if src is None else src
    tgt = targets(encoder) if tgt is None else tgt
    return reconstruction_loss_mean(decoder, encoder(src), tgt)


# ---------------------------------------------------------------- the reference
@pytest.mark.parametrize("tie", [True, False])
def test_loss_and_encoder_gradients_equal_sentence_transformers(tiny_bert_dir, encoder, tie):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss

    st = SentenceTransformer(
        modules=[st_modules.Transformer(str(tiny_bert_dir)), st_modules.Pooling(32, "cls")],
        device="cpu",
    )
    path = None if tie else str(tiny_bert_dir)  # untied: a separate copy of the same checkpoint
    ref = DenoisingAutoEncoderLoss(st, decoder_name_or_path=path, tie_encoder_decoder=tie)
    decoder = build_decoder(encoder, decoder_name_or_path=path, tie=tie)
    st_enc = st[0].auto_model
    # same starting weights: tied ones come from the same checkpoint, the decoder-only ones
    # (cross-attention, LM-head transform: random in both) are copied from the reference
    for name, p in ref.decoder.named_parameters():
        if name in decoder.tied_names:
            assert torch.equal(p, decoder.hf_model.get_parameter(name)), name
        else:
            decoder.hf_model.get_parameter(name).data.copy_(p.data)
    st.eval(), ref.eval(), encoder.eval(), decoder.eval()

    src, tgt = encoder.tokenize(noisy(ORIGINAL)), targets(encoder)
    assert (tgt["attention_mask"] == 0).any()  # the batch has padding
    ours = loss_of(encoder, decoder, src, tgt)
    theirs = ref([{k: v.clone() for k, v in f.items()} for f in (src, tgt)], None)
    assert abs(ours.item() - theirs.item()) < 1e-5, (ours.item(), theirs.item())
    ours.backward()
    theirs.backward()
    compared = 0
    for (name, p), (st_name, q) in zip(
        encoder.model.named_parameters(), st_enc.named_parameters(), strict=True
    ):
        assert name == st_name
        if q.grad is None:  # the pooler: cls_before_pooler does not use it, nor does ST
            assert p.grad is None, name
            continue
        assert (p.grad - q.grad).abs().max().item() < 1e-5, name
        compared += 1
    assert compared == len(list(encoder.model.parameters())) - 2  # all but the pooler
    for name, p in ref.decoder.named_parameters():
        if name not in decoder.tied_names:
            ours_grad = decoder.hf_model.get_parameter(name).grad
            assert (ours_grad - p.grad).abs().max().item() < 1e-5, name


# ---------------------------------------------------------------- tying
def test_tied_decoder_shares_storage_and_moves_the_encoder(encoder):
    decoder = build_decoder(encoder)
    enc = dict(encoder.model.named_parameters())
    for dec_name, enc_name in decoder.tied_names.items():
        assert decoder.hf_model.get_parameter(dec_name) is enc[enc_name]
    out = decoder.hf_model.get_output_embeddings().weight
    assert out is encoder.model.get_input_embeddings().weight  # the LM head follows the tie
    assert len(decoder.tied_names) == len(enc) - 2  # all but the pooler's weight and bias

    before = {n: p.detach().clone() for n, p in enc.items()}
    memory = torch.randn(len(ORIGINAL), encoder.hidden_size)  # not from the encoder
    loss = reconstruction_loss_mean(decoder, memory, targets(encoder))
    loss.backward()
    with torch.no_grad():
        for p in encoder.model.parameters():  # an optimizer over the encoder alone
            if p.grad is not None:
                p -= 0.1 * p.grad
    moved = [n for n, p in enc.items() if not torch.equal(p, before[n])]
    assert "embeddings.word_embeddings.weight" in moved
    assert "encoder.layer.1.intermediate.dense.weight" in moved
    assert len(moved) == len(decoder.tied_names)


def test_untied_decoder_is_separate(tmp_path, encoder, minilm_dir):
    other = build_tiny_bert(tmp_path / "dec", minilm_dir, seed=1)
    decoder = build_decoder(encoder, decoder_name_or_path=str(other), tie=False)
    enc_ids = {id(p) for p in encoder.model.parameters()}
    assert not decoder.tied_names
    assert not enc_ids & {id(p) for p in decoder.hf_model.parameters()}
    assert {id(p) for p in decoder.parameters()} == {id(p) for p in decoder.hf_model.parameters()}
    before = [p.detach().clone() for p in encoder.model.parameters()]
    reconstruction_loss_mean(decoder, torch.randn(4, 32), targets(encoder)).backward()
    assert all(p.grad is None for p in encoder.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.model.parameters(), strict=True))


def test_objective_state_holds_no_encoder_parameter(encoder):
    decoder = build_decoder(encoder)
    params = list(encoder.parameters()) + list(decoder.parameters())
    assert len({id(p) for p in params}) == len(params)  # an optimizer gets each once
    enc_ptrs = {p.data_ptr() for p in encoder.parameters()}
    state = decoder.state_dict()
    assert state and not enc_ptrs & {t.data_ptr() for t in state.values()}
    assert all(k.startswith("own.") for k in state)
    names = [k.removeprefix("own.").replace("__", ".") for k in state]
    assert all(".crossattention." in n or n.startswith("cls.predictions.") for n in names)
    # a fresh decoder on the same encoder loads the state (resume of the training-only part)
    other = build_decoder(encoder)
    query = "bert__encoder__layer__0__crossattention__self__query__weight"  # random at build
    assert not torch.equal(state["own." + query], other.own[query])
    other.load_state_dict(state)
    fresh = other.state_dict()
    assert fresh.keys() == state.keys()
    assert all(torch.equal(state[k], fresh[k]) for k in state)


def test_saved_model_keys_equal_the_starting_model(tmp_path, tiny_bert_dir, encoder):
    decoder = build_decoder(encoder)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3)
    loss_of(encoder, decoder).backward()
    opt.step()
    encoder.save(tmp_path / "out")

    def keys(path: Path) -> set[str]:
        with safe_open(str(path), "pt") as f:
            return set(f.keys())

    assert keys(tmp_path / "out" / "model.safetensors") == keys(tiny_bert_dir / "model.safetensors")


# ---------------------------------------------------------------- the decoder's behaviour
def test_decoder_is_causal_and_reads_only_the_memory(encoder):
    decoder = build_decoder(encoder).eval()
    tgt = targets(encoder)
    ids, mask, _, _ = shift_targets(tgt["input_ids"], tgt["attention_mask"])
    memory = torch.randn(len(ORIGINAL), 1, encoder.hidden_size)
    with torch.no_grad():
        base = decoder(ids, mask, memory)
        later = ids.clone()
        later[:, 3] = encoder.tokenizer.convert_tokens_to_ids("house")
        changed = decoder(later, mask, memory)
        other_memory = decoder(ids, mask, memory + 1.0)
    assert torch.allclose(base[:, :3], changed[:, :3], atol=1e-6)  # no look-ahead
    assert not torch.allclose(base[:, 3:], changed[:, 3:])
    assert (base - other_memory).abs().amax(dim=-1).min() > 1e-4  # every position reads it


def test_dropout_follows_train_and_eval(encoder):
    decoder = build_decoder(encoder)
    memory = torch.randn(4, 1, 32)
    tgt = targets(encoder)
    args = (tgt["input_ids"][:, :-1], tgt["attention_mask"][:, :-1], memory)
    decoder.eval()
    assert torch.equal(decoder(*args), decoder(*args))
    decoder.train()
    assert not torch.equal(decoder(*args), decoder(*args))


def test_loss_sum_ignores_padding_and_adds_over_sentences(encoder):
    decoder = build_decoder(encoder).eval()
    memory = torch.randn(len(ORIGINAL), encoder.hidden_size)
    with torch.no_grad():
        total, count = reconstruction_loss(decoder, memory, targets(encoder))
        parts = [
            reconstruction_loss(decoder, memory[i : i + 1], targets(encoder, [t]))
            for i, t in enumerate(ORIGINAL)
        ]
    lengths = [len(encoder.tokenizer(t)["input_ids"]) - 1 for t in ORIGINAL]  # [CLS] not predicted
    assert count.item() == sum(lengths) == sum(int(n) for _, n in parts)
    assert abs(total.item() - sum(s.item() for s, _ in parts)) < 1e-4


def test_shift_targets_is_the_reference_shift():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    mask = (ids != 0).long()
    dec_ids, dec_mask, labels, label_mask = shift_targets(ids, mask)
    assert dec_ids.tolist() == [[101, 7, 8, 102], [101, 9, 102, 0]]
    assert labels.tolist() == [[7, 8, 102, 0], [9, 102, 0, 0]]
    assert label_mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert dec_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_tokenize_targets_counts_truncation(encoder):
    texts = ["short", "a b c d e f g h", "a b c d"]  # 5, 10 and exactly 6 tokens
    features, cut = tokenize_targets(encoder.tokenizer, texts, 6)
    assert cut.tolist() == [False, True, False]
    assert features["input_ids"].shape == (3, 6)
    assert features["input_ids"][0, 2].item() == encoder.tokenizer.sep_token_id
    assert features["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]  # right padding


# ---------------------------------------------------------------- what the decoder cannot use
def test_architectures_without_a_cross_attention_causal_lm_are_refused():
    from transformers import BertConfig, DistilBertConfig, LlamaConfig, MPNetConfig, RobertaConfig

    assert check_decoder_architecture(BertConfig(), "ok").__name__ == "BertLMHeadModel"
    assert check_decoder_architecture(RobertaConfig(), "ok").__name__ == "RobertaForCausalLM"
    for cfg, what in ((MPNetConfig(), "no causal-LM class"), (DistilBertConfig(), "no causal-LM"),
                      (LlamaConfig(), "no cross-attention")):  # fmt: skip
        with pytest.raises(UserError, match=f"'my-model'.*{what}"):
            check_decoder_architecture(cfg, "my-model")


def test_unsupported_encoder_fails_before_training(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    path = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2,
                                     hidden_dim=64)).save_pretrained(path)  # fmt: skip
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(path)
    enc = Encoder.from_pretrained(path, device="cpu")
    with pytest.raises(UserError, match=r"distil.*\(distilbert\) has no causal-LM class"):
        build_decoder(enc)


def test_tokenizer_needs_a_start_and_a_pad_token(minilm_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    check_decoder_tokenizer(tok, "minilm")
    sep = tok.sep_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="$A [SEP]", special_tokens=[("[SEP]", sep)]
    )
    with pytest.raises(UserError, match="'minilm' adds no start token"):
        check_decoder_tokenizer(tok, "minilm")
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    tok.pad_token = None
    with pytest.raises(UserError, match="no padding token"):
        check_decoder_tokenizer(tok, "minilm")


def test_bad_decoder_options(tmp_path, encoder, minilm_dir):
    with pytest.raises(UserError, match="untied decoder"):
        build_decoder(encoder, decoder_name_or_path="x", tie=True)
    with pytest.raises(UserError, match="needs decoder_name_or_path"):
        build_decoder(encoder, tie=False)
    wide = build_tiny_bert(tmp_path / "wide", minilm_dir, hidden_size=64, intermediate_size=128)
    with pytest.raises(UserError, match="size 32 but the decoder .* hidden size 64"):
        build_decoder(encoder, decoder_name_or_path=str(wide), tie=False)
    with pytest.raises(UserError, match="cannot load decoder"):
        build_decoder(encoder, decoder_name_or_path=str(tmp_path / "missing"), tie=False)


def test_tie_survives_moving_the_modules(encoder):
    """.to() on the encoder and on the objective's decoder keeps one parameter set."""
    decoder = build_decoder(encoder)
    encoder.to(torch.float64)
    decoder.to(torch.float64)
    enc = dict(encoder.model.named_parameters())
    assert all(decoder.hf_model.get_parameter(d) is enc[e] for d, e in decoder.tied_names.items())
    assert all(p.dtype == torch.float64 for p in decoder.hf_model.parameters())
    loss = loss_of(encoder, decoder)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)  # never below float32


# ---------------------------------------------------------------- decoder passes (speed)
def _padded_reference(decoder, memory: torch.Tensor, tgt: dict) -> torch.Tensor:
    """Per row (token cross-entropy sum, count) from one padded pass of the whole causal LM,
    logits at every position, padding ignored: sentence-transformers' computation."""
    dec_ids, dec_mask, labels, keep = shift_targets(tgt["input_ids"], tgt["attention_mask"])
    ones = torch.ones(len(memory), 1, dtype=dec_mask.dtype)
    logits = decoder.hf_model(
        input_ids=dec_ids, attention_mask=dec_mask, encoder_hidden_states=memory[:, None],
        encoder_attention_mask=ones, use_cache=False,
    ).logits  # fmt: skip
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.masked_fill(~keep, -100).flatten(), reduction="none"
    ).view(labels.shape)
    return torch.stack([ce.sum(1), keep.sum(1).to(ce.dtype)], dim=1)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlmr"])
def test_bucketed_decoder_with_its_head_on_real_labels_equals_one_padded_pass(family_dir, family):
    """``reconstruction_row_losses(..., buckets=3)``: the decoder runs 3 passes over rows of
    similar target length (the short rows without the long rows' padding), the word embeddings
    are looked up once, the LM head runs once on exactly the real label positions; losses and
    every gradient equal the one padded pass of the whole model (fp64), also for a target with
    a pad token inside its text (RoBERTa-style position ids count from the ids)."""
    enc = Encoder.from_pretrained(family_dir(family), device="cpu").double()
    decoder = build_decoder(enc).double().eval()
    texts = [*ORIGINAL, "yes", "a b", f"two words {enc.tokenizer.pad_token} and more words"]
    tgt = targets(enc, texts)
    memory = torch.randn(len(texts), enc.hidden_size, dtype=torch.float64, requires_grad=True)
    ref = _padded_reference(decoder, memory, tgt)
    ref_grads = torch.autograd.grad(
        ref[:, 0].pow(2).sum(), [memory, *enc.parameters()], allow_unused=True
    )

    widths, heads, lookups = [], [], []
    body = decoder.hf_model.base_model
    body.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["attention_mask"].shape[1]), with_kwargs=True
    )
    decoder._head.register_forward_hook(lambda _m, args, _o: heads.append(args[0].shape))
    words = decoder.hf_model.get_input_embeddings()
    words.register_forward_hook(lambda _m, args, _o: lookups.append(args[0].shape))
    got = reconstruction_row_losses(decoder, memory, tgt, buckets=3)
    grads = torch.autograd.grad(
        got[:, 0].pow(2).sum(), [memory, *enc.parameters()], allow_unused=True
    )

    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)
    assert sum(r is not None for r in ref_grads) > 10  # the tied parameters (not the pooler)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-9)
    width = tgt["input_ids"].shape[1] - 1
    assert len(widths) == 3 and max(widths) == width and min(widths) < width // 2
    assert heads == [torch.Size([int(ref[:, 1].sum()), enc.hidden_size])]
    assert lookups == [torch.Size([len(texts), width])]


def test_a_decoder_whose_head_is_not_one_module_runs_whole(tmp_path):
    """ELECTRA's causal LM ends in two modules: the decoder's states are then its logits (no
    separate head), with the same row losses as the one padded pass."""
    from transformers import ElectraConfig, ElectraForCausalLM

    cfg = ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, is_decoder=True,
                        add_cross_attention=True)  # fmt: skip
    torch.manual_seed(0)
    decoder = TSDAEDecoder(ElectraForCausalLM(cfg).double(), tokenizer=None).eval()
    assert decoder._head is None
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 10, 2, 0]])
    tgt = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    memory = torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        got = reconstruction_row_losses(decoder, memory, tgt, buckets=2)
        torch.testing.assert_close(got, _padded_reference(decoder, memory, tgt))
