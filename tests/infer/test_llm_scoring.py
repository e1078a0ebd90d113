"""LLM rerankers (yes-logit and seq-cls) against plain transformers forwards on a tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragr import Reranker

PROMPT = {"segments": ["Q: {query}", " D: {document}", " is it relevant?"], "yes_token": "yes", "no_token": "no"}
PAIRS = [("what is the capital of france?", "Paris is the capital of France."), ("who wrote hamlet?", "Shakespeare"),
         ("why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue.")]


def manual_ids(tok, q, d, bos=False):
    ids = [tok.bos_token_id] if bos else []
    for text in (f"Q: {q}", f" D: {d}", " is it relevant?"):
        ids += tok(text, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize("with_no", [False, True])
def test_yes_logit_equals_the_last_position_logit_of_a_plain_forward(decoder_dir, with_no):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    lm = AutoModelForCausalLM.from_pretrained(decoder_dir).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    want = []
    with torch.no_grad():
        for q, d in PAIRS:
            logits = lm(input_ids=torch.tensor([manual_ids(tok, q, d, bos=True)])).logits[0, -1]
            want.append((logits[yes] - (logits[no] if with_no else 0)).item())
    prompt = dict(PROMPT, bos=True, no_token="no" if with_no else None)
    rr = Reranker(str(decoder_dir), prompt=prompt, batch_size=3)  # one padded batch of different lengths
    assert rr.family == "llm_yes"
    np.testing.assert_allclose(rr.score(PAIRS), want, atol=1e-5)


def test_seqcls_head_equals_a_plain_forward(decoder_seqcls_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_seqcls_dir)
    model = AutoModelForSequenceClassification.from_pretrained(decoder_seqcls_dir).eval()
    with torch.no_grad():
        want = [model(input_ids=torch.tensor([manual_ids(tok, q, d)])).logits[0, 0].item() for q, d in PAIRS]
    rr = Reranker(str(decoder_seqcls_dir), prompt=PROMPT, batch_size=2)
    assert rr.family == "llm_seqcls"
    np.testing.assert_allclose(rr.score(PAIRS), want, atol=1e-5)


def test_truncation_cuts_the_document_never_the_prompt(decoder_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    rr = Reranker(str(decoder_dir), prompt=PROMPT, max_length=24)
    ids = rr.scorer.encode_pair("why is the sky blue?", "blue " * 200)
    suffix = tok(" is it relevant?", add_special_tokens=False)["input_ids"]
    assert len(ids) == 24 and ids[-len(suffix):] == suffix
    assert ids[: len(tok("Q: why is the sky blue?", add_special_tokens=False)["input_ids"])] == \
        tok("Q: why is the sky blue?", add_special_tokens=False)["input_ids"]


def test_max_chunk_for_llms_is_the_max_over_windows_scored_alone(decoder_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    q, doc, max_length = "why is the sky blue?", " ".join(f"fact {i} the sky scatters light" for i in range(12)), 32

    def n(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    size = max_length - n(f"Q: {q}") - n(" D: ") - n(" is it relevant?")
    offsets = tok(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    windows = [doc[offsets[s][0] : offsets[min(s + size, len(offsets)) - 1][1]] for s in range(0, len(offsets), size)]
    assert len(windows) > 2
    one = Reranker(str(decoder_dir), prompt=PROMPT, max_length=512)
    want = max(one.score([(q, w) for w in windows]))
    got = Reranker(str(decoder_dir), prompt=PROMPT, max_length=max_length, long_doc="max-chunk", overlap=0).score([(q, doc)])
    assert got[0] == pytest.approx(want, abs=1e-5)
