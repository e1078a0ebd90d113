"""The embedder: pooling against manual computation, and the saved folder in sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragr.errors import UserError
from ragr.models.embedder import Embedder, pool
from ragr.models.hub import resolve_model_path


def test_pooling_modes_against_numpy():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ht, mt = torch.tensor(h), torch.tensor(mask)
    np.testing.assert_allclose(pool(ht, mt, "cls").numpy(), h[:, 0])
    mean = np.stack([h[0, :3].mean(0), h[1].mean(0)])
    np.testing.assert_allclose(pool(ht, mt, "mean").numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(pool(ht, mt, "last").numpy(), np.stack([h[0, 2], h[1, 4]]))
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # left padding: last real token is the last position
    np.testing.assert_allclose(pool(ht, left, "last").numpy(), np.stack([h[0, 4], h[1, 4]]))


@pytest.mark.parametrize("pooling, dense_dim", [("mean", None), ("cls", 16)])
def test_saved_model_loads_in_sentence_transformers_with_equal_embeddings(tiny_bert, tmp_path, pooling, dense_dim):
    from sentence_transformers import SentenceTransformer

    model = Embedder.from_pretrained(tiny_bert, pooling=pooling, dense_dim=dense_dim, query_prompt="query: ")
    model.save(tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    texts = ["a short one", "a somewhat longer sentence about the capital of France and its people"]
    ours = model.encode(texts).numpy()
    theirs = st.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, atol=1e-5)
    assert theirs.shape[1] == (dense_dim or 32)
    # the query prompt travels with the model
    np.testing.assert_allclose(model.encode(["x"], is_query=True).numpy(), st.encode(["x"], prompt_name="query"), atol=1e-5)
    # and ragr reloads it identically (pooling and Dense read from the folder)
    again = Embedder.from_pretrained(str(tmp_path / "m"))
    assert again.pooling == pooling and again.dim == (dense_dim or 32)
    np.testing.assert_allclose(again.encode(texts).numpy(), ours, atol=1e-6)


def test_mean_pooling_matches_manual_transformers_forward(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    tok, bert = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    texts = ["one", "two words here"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = bert(**enc).last_hidden_state.numpy()
    m = enc["attention_mask"].numpy()[..., None]
    ref = (h * m).sum(1) / m.sum(1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(Embedder.from_pretrained(tiny_bert, pooling="mean").encode(texts).numpy(), ref, atol=1e-5)


def test_hub_names_resolve_from_local_dirs_and_fail_clearly_offline(tiny_bert, monkeypatch):
    assert resolve_model_path(tiny_bert) == tiny_bert
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"model.name_or_path=DIR"):
        resolve_model_path("nobody/no-such-model")
    with pytest.raises(UserError, match="no such model directory"):
        resolve_model_path("./missing/dir")


def test_hub_ids_load_from_the_local_hub_cache(tiny_bert, tmp_path, monkeypatch):
    """A hub id already in the Hugging Face cache loads by name with no network."""
    import shutil

    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_bert, snap)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    path = resolve_model_path("acme/tiny")
    assert Embedder.from_pretrained(path).dim == 32


def test_length_sorted_chunks_give_the_same_loss_and_gradients_as_plain_padding(tiny_bert_nodropout, assert_chunked_matches_plain):
    from ragr.families import get_family
    from ragr.families.forward import ChunkedForward
    from ragr.losses.infonce import InfoNCE

    family = get_family("embedder")
    texts_q = ["short", "a much longer query with many many words in it", "mid length query"]
    texts_d = [f"document {i} " + "word " * (i * 5) for i in range(6)]
    loss_fn = InfoNCE(0.05)

    def run(chunked: bool):
        model = Embedder.from_pretrained(tiny_bert_nodropout, max_doc_length=64)
        if chunked:  # the training path: length-planned chunks through ChunkedForward
            fwd = ChunkedForward(model, model, "cpu", chunk_size=2)
            q = family.encode(fwd, texts_q, is_query=True)
            d = family.encode(fwd, texts_d, is_query=False)
        else:  # one forward, everything padded to the longest text
            q = model(**model.tokenize(texts_q, is_query=True))
            d = model(**model.tokenize(texts_d, is_query=False))
        loss = loss_fn(q, d)["loss"]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert_chunked_matches_plain(run)
