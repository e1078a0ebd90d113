"""bge-m3 on a tiny XLM-R in the published layout (colbert_linear.pt, sparse_linear.pt): load, train a step through
`ragr train model=bge-m3`, save, reload — dense, sparse and ColBERT scores equal an independent computation from the
files; fix_encoder trains the heads only; the unified loss against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr.cli.main import app

QUERIES = ["how far is the moon?", "who wrote hamlet?"]
DOCS = ["The moon is about 384,400 kilometres away.", "Hamlet is a tragedy written by William Shakespeare.",
        "Spiders have eight legs."]


def make_tiny_xlmr(path: Path, texts: list[str], seed: int = 0) -> str:
    """A 2-layer XLM-RoBERTa (hidden 32) with a sentencepiece-style Unigram tokenizer trained here on ``texts``
    (<s> </s> <pad> <unk> <mask>, as XLM-R), and random bge-m3 heads saved as colbert_linear.pt / sparse_linear.pt."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                                           unk_token="<unk>"))
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", s), ("</s>", e)])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    config = XLMRobertaConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=130, pad_token_id=fast.pad_token_id,
                              bos_token_id=s, eos_token_id=e, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    XLMRobertaModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    colbert, sparse = torch.nn.Linear(32, 16), torch.nn.Linear(32, 1)
    torch.nn.init.constant_(sparse.bias, 0.5)  # most tokens get a weight at first
    torch.save(colbert.state_dict(), Path(path) / "colbert_linear.pt")
    torch.save(sparse.state_dict(), Path(path) / "sparse_linear.pt")
    return str(path)


@pytest.fixture(scope="module")
def tiny_m3(data_dir, tmp_path_factory) -> str:
    texts = []
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        texts += [r["query"], *r["pos"], *r["neg"]]
    return make_tiny_xlmr(tmp_path_factory.mktemp("tiny-m3"), texts)


def reference_scores(path: str, queries: list[str], docs: list[str]) -> dict[str, np.ndarray]:
    """Independent: transformers' AutoModel + the two .pt heads + bge-m3's inference formulas, text by text."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    heads = {}
    for name in ("colbert_linear", "sparse_linear"):
        state = torch.load(Path(path) / f"{name}.pt", weights_only=True)
        heads[name] = (state["weight"].numpy().astype(np.float64), state["bias"].numpy().astype(np.float64))
    unused = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}

    def rep(text: str, max_len: int):
        enc = tok(text, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0].numpy().astype(np.float64)
        ids = enc["input_ids"][0].tolist()
        dense = h[0] / np.linalg.norm(h[0])
        w = np.maximum(h @ heads["sparse_linear"][0].T + heads["sparse_linear"][1], 0)[:, 0]
        lex: dict[int, float] = {}
        for t, x in zip(ids, w):
            if t not in unused and x > 0:
                lex[t] = max(lex.get(t, 0.0), float(x))
        c = h[1:] @ heads["colbert_linear"][0].T + heads["colbert_linear"][1]
        c = c / np.linalg.norm(c, axis=1, keepdims=True)
        return dense, lex, c

    qs, ds = [rep(q, 64) for q in queries], [rep(d, 512) for d in docs]
    out = {k: np.zeros((len(queries), len(docs))) for k in ("dense", "sparse", "colbert")}
    for i, (qd, ql, qc) in enumerate(qs):
        for j, (dd, dl, dc) in enumerate(ds):
            out["dense"][i, j] = qd @ dd
            out["sparse"][i, j] = sum(w * dl.get(t, 0.0) for t, w in ql.items())
            out["colbert"][i, j] = (qc @ dc.T).max(1).sum() / qc.shape[0]
    return out


def ragr_scores(path: str, queries: list[str], docs: list[str]) -> dict[str, np.ndarray]:
    from ragr.families.bge_m3 import BGEM3Scorer

    out = {}
    for mode in ("dense", "sparse", "colbert"):
        scorer = BGEM3Scorer.load(path, mode=mode)
        out[mode] = np.array(scorer.score_groups(queries, [docs] * len(queries)))
    return out


def assert_scores_equal(got, want) -> None:
    for k in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_published_layout_loads_with_its_heads(tiny_m3):
    from ragr.families.bge_m3 import BGEM3
    from ragr.infer.detect import detect_family

    model = BGEM3.from_pretrained(tiny_m3)
    state = torch.load(Path(tiny_m3) / "colbert_linear.pt", weights_only=True)
    torch.testing.assert_close(model.colbert_linear.weight.detach(), state["weight"])
    assert model.dim == 16
    want = reference_scores(tiny_m3, QUERIES, DOCS)
    assert (want["sparse"] > 0).any()
    assert_scores_equal(ragr_scores(tiny_m3, QUERIES, DOCS), want)
    assert detect_family(tiny_m3) == "colbert"  # a published bge-m3 folder reranks by its ColBERT head by default


@pytest.fixture(scope="module")
def trained_m3(tiny_m3, data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("m3") / "run"
    res = CliRunner().invoke(app, ["train", "--quiet", "model=bge-m3", f"model.name_or_path={tiny_m3}",
                                   f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'dev.jsonl'}",
                                   "data.num_negatives=2", "trainer.max_steps=2", "trainer.batch_size=6", "trainer.lr=1e-3",
                                   "trainer.log_every=1", "loss.self_distill=true", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    return run


def test_train_save_reload_gives_equal_dense_sparse_colbert_scores(tiny_m3, trained_m3):
    saved = str(trained_m3 / "model")
    for name in ("colbert_linear.pt", "sparse_linear.pt", "config.json", "modules.json"):
        assert (Path(saved) / name).is_file(), name
    want = reference_scores(saved, QUERIES, DOCS)
    assert_scores_equal(ragr_scores(saved, QUERIES, DOCS), want)
    before = reference_scores(tiny_m3, QUERIES, DOCS)
    assert any(np.abs(want[k] - before[k]).max() > 1e-4 for k in want)  # it trained
    steps = [json.loads(x) for x in (trained_m3 / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 2 and all(np.isfinite([r[k] for k in ("dense", "sparse", "colbert", "ensemble", "self_distill")]).all()
                                   for r in steps)
    from ragr.infer.detect import detect_family

    assert detect_family(saved) == "bge_m3"
    evals = json.loads((trained_m3 / "eval.json").read_text())
    assert "active_dims_doc" in evals["after"]
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(saved, device="cpu").encode(DOCS, convert_to_tensor=True).cpu()
    from ragr.families.bge_m3 import BGEM3

    ours = torch.stack([e["dense"] for e in BGEM3.from_pretrained(saved).encode(DOCS)])
    torch.testing.assert_close(st, ours, rtol=1e-4, atol=1e-5)


def test_fix_encoder_trains_the_heads_only(tiny_m3, data_dir, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--quiet", "model=bge-m3", f"model.name_or_path={tiny_m3}", "model.fix_encoder=true",
                                   f"data.train={data_dir / 'train.jsonl'}", "data.eval=null", "data.num_negatives=1",
                                   "trainer.max_steps=1", "trainer.batch_size=4", "trainer.lr=1e-2", f"output_dir={run}"])
    assert res.exit_code == 0, res.output
    a, b = load_file(str(Path(tiny_m3) / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        old = torch.load(Path(tiny_m3) / name, weights_only=True)["weight"]
        new = torch.load(run / "model" / name, weights_only=True)["weight"]
        assert (new - old).abs().max() > 1e-5, name


def test_unified_loss_matches_numpy():
    from ragr.losses.m3 import M3Loss

    rng = np.random.default_rng(0)
    b, g, tau = 2, 2, 0.5
    mats = {k: rng.normal(size=(b, b * g)).astype(np.float32) for k in ("dense", "sparse", "colbert")}

    def ce(s):
        return np.mean([np.log(np.exp(s[i]).sum()) - s[i, i * g] for i in range(b)])

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s = {k: v / tau for k, v in mats.items()}
    ens = s["dense"] + 0.3 * s["sparse"] + s["colbert"]
    base = (ce(s["dense"]) + ce(ens) + 0.1 * ce(s["sparse"]) + ce(s["colbert"])) / 4
    p = softmax(ens)
    soft = {k: -np.mean((p * np.log(softmax(v))).sum(-1)) for k, v in s.items()}
    kd = (soft["dense"] + 0.1 * soft["sparse"] + soft["colbert"]) / 3
    torch_mats = {k: torch.tensor(v) for k, v in mats.items()}
    plain = M3Loss(temperature=tau).score_loss(torch_mats)
    assert plain["loss"].item() == pytest.approx(base, rel=1e-5)
    distilled = M3Loss(temperature=tau, self_distill=True, self_distill_start_step=3)
    distilled.set_step(2)
    assert distilled.score_loss(torch_mats)["loss"].item() == pytest.approx(base, rel=1e-5)  # not started yet
    distilled.set_step(3)
    assert distilled.score_loss(torch_mats)["loss"].item() == pytest.approx((base + kd) / 2, rel=1e-5)
