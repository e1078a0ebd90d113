"""Chunk planning and the shared input-embedding lookup (ragr.models.chunking)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from ragr.models.chunking import plan_chunks, shared_input_embeddings


def brute_force_cost(lengths: list[int], max_rows: int, overhead: int) -> int:
    """The cheapest cut of the sorted lengths, by trying every set of cut points."""
    srt = sorted(lengths)
    n, best = len(srt), None
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = [0, *cuts, n]
            spans = list(zip(bounds, bounds[1:]))
            if any(b - a > max_rows for a, b in spans):
                continue
            cost = sum((b - a) * srt[b - 1] + overhead for a, b in spans)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_cut_and_covers_every_text_once(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([3, 5, 8, 9, 12, 40, 128]) for _ in range(rng.randint(1, 11))]
    max_rows, overhead = rng.choice([1, 2, 3, 4, 32]), rng.choice([0, 16, 64])
    plan = plan_chunks(lengths, max_rows, overhead)
    assert sorted(i for chunk in plan for i in chunk) == list(range(len(lengths)))
    assert all(1 <= len(chunk) <= max_rows for chunk in plan)
    cost = sum(len(chunk) * max(lengths[i] for i in chunk) + overhead for chunk in plan)
    assert cost == brute_force_cost(lengths, max_rows, overhead)


def test_plan_gives_long_texts_their_own_chunk():
    lengths = [10] * 30 + [128, 128]
    plan = plan_chunks(lengths, max_rows=32, overhead=64)
    # one chunk of 32 padded to 128 = 4096 tokens; split: 300 + 256 (+ one overhead)
    assert sorted(map(len, plan)) == [2, 30]


def _word_embedding_backwards(out: torch.Tensor, weight: torch.Tensor) -> int:
    """How many backward nodes in ``out``'s graph write a gradient into ``weight``."""
    seen, stack, count = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None and getattr(nxt, "variable", None) is weight:
                count += 1
            stack.append(nxt)
    return count


def test_embedder_chunks_share_one_word_embedding_backward(tiny_bert_nodropout):
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward
    from ragr.models.embedder import Embedder

    model = Embedder.from_pretrained(tiny_bert_nodropout, max_doc_length=64)
    texts = [f"document {i} " + "word " * (i * 7) for i in range(8)]
    out = get_family("embedder").encode(ChunkedForward(model, model, "cpu", chunk_size=2), texts, is_query=False)
    weight = model.backbone.get_input_embeddings().weight
    assert _word_embedding_backwards(out, weight) == 1
    with torch.no_grad():  # and the vectors are those of one plainly padded forward
        plain = model(**model.tokenize(texts, is_query=False))
    torch.testing.assert_close(out.detach(), plain, atol=1e-5, rtol=1e-4)


def test_shared_lookup_steps_aside_when_the_ids_differ():
    emb = torch.nn.Embedding(50, 4)
    expected, other = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]])
    with shared_input_embeddings(emb, [expected, expected]):
        got = emb(other)  # not what was planned: the module's own lookup
        after = emb(expected)  # and the hook stays out of the way from then on
    torch.testing.assert_close(got, emb.weight[other])
    assert after.grad_fn is not None
    torch.testing.assert_close(after, emb.weight[expected])


def test_colbert_chunks_with_gradients_equal_one_padded_forward(tiny_bert_nodropout, assert_chunked_matches_plain):
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward
    from ragr.losses.infonce import InfoNCE
    from ragr.models.colbert import ColBERT

    q_texts = ["short", "a much longer question with many words in it", "mid length one"]
    d_texts = [f"document {i} " + "word " * (i * 5) for i in range(6)]

    def run(chunked: bool):
        torch.manual_seed(0)
        model = ColBERT.from_pretrained(tiny_bert_nodropout, dim=8, max_doc_length=64)
        q, d = model.tokenize(q_texts, is_query=True), model.tokenize(d_texts, is_query=False)
        if chunked:  # the training path: the family tokenizes, then runs length-planned chunks
            fwd = ChunkedForward(model, model, "cpu", chunk_size=2)
            (qv, q_mask), (dv, d_mask) = (get_family("colbert").encode(fwd, q_texts, is_query=True),
                                          get_family("colbert").encode(fwd, d_texts, is_query=False))
            assert torch.equal(q_mask, q["token_mask"]) and torch.equal(d_mask, d["token_mask"])
        else:
            qv, dv = model(**q), model(**d)
        loss = InfoNCE(0.1).score_loss(model.score_matrix(qv, q["token_mask"], dv, d["token_mask"]))["loss"]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert_chunked_matches_plain(run)


def test_cross_encoder_chunks_with_gradients_equal_one_padded_forward(tiny_bert_nodropout, assert_chunked_matches_plain):
    from ragr.losses.rerank import ListwiseLoss
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward
    from ragr.models.cross_encoder import CrossEncoder

    queries = ["short", "a much longer question with many words in it", "mid length one"]
    docs = [f"document {i} " + "word " * (i * 5) for i in range(6)]
    pair_q = [q for q in queries for _ in range(2)]
    labels = torch.tensor([[1.0, 0.0]] * 3)

    def run(chunked: bool):
        torch.manual_seed(0)
        model = CrossEncoder.from_pretrained(tiny_bert_nodropout)
        if chunked:
            fwd = ChunkedForward(model, model, torch.device("cpu"), chunk_size=2)  # queries given per pair
            scores = get_family("cross_encoder").score_pairs(fwd, pair_q, docs, torch.arange(len(pair_q)))
        else:
            scores = model(**model.tokenize(pair_q, docs))
        loss = ListwiseLoss()(scores.view(labels.shape), labels)["loss"]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert_chunked_matches_plain(run)
