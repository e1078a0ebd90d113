"""Which reranker family a model folder holds, read from its own files (never from its name).

In order: ``ragr.json`` naming a family -> that family (a bge_m3 folder saved by ragr too); ``colbert_linear.pt``
-> colbert (a published bge-m3 reranks by its ColBERT head; ``--family bge_m3`` uses all three); a
sentence-transformers SparseEncoder (``model_type`` or a SpladePooling module) -> splade; a
sentence-transformers ``modules.json`` with a Pooling module -> embedder; a peft adapter ->
by its task type (SEQ_CLS -> llm_seqcls, CAUSAL_LM -> llm_yes); ``config.json`` architectures
``*ForSequenceClassification`` -> cross_encoder for encoder model types, llm_seqcls otherwise;
``*ForCausalLM`` -> llm_yes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ragr.errors import UserError

#: ``model_type`` values of bidirectional encoders (cross-encoders); every other type is a decoder.
ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "electra", "deberta", "deberta-v2", "distilbert",
    "albert", "camembert", "mpnet", "ernie", "ernie_m", "nezha", "megatron-bert", "mobilebert", "roformer",
    "funnel", "longformer", "bigbird", "big_bird", "xlnet", "modernbert", "new", "nomic_bert", "jina_bert",
    "esm", "luke", "mra", "nystromformer", "rembert", "squeezebert", "canine", "data2vec-text", "ibert",
    "layoutlm", "markuplm", "splinter", "yoso", "convbert", "flaubert", "xmod", "tapas", "mega",
})


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def family_from_config(config: dict) -> str | None:
    """Family implied by a transformers ``config.json`` (architectures + model_type), or None."""
    archs = config.get("architectures") or []
    model_type = str(config.get("model_type", "")).lower()
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross_encoder" if model_type in ENCODER_TYPES else "llm_seqcls"
    if any(a.endswith("ForCausalLM") or a.endswith("ForConditionalGeneration") for a in archs):
        return "llm_yes"
    return None


def detect_family(path: str | Path) -> str:
    """Return the reranker family of the local model folder ``path`` (see the module docstring).

    Raises:
        UserError: when the folder says nothing that identifies a family.
    """
    path = Path(path)
    meta = _read_json(path / "ragr.json")
    if isinstance(meta, dict) and isinstance(meta.get("family"), str):
        return meta["family"]
    if (path / "colbert_linear.pt").is_file():
        return "colbert"
    modules = _read_json(path / "modules.json")
    st_conf = _read_json(path / "config_sentence_transformers.json")
    if (isinstance(st_conf, dict) and st_conf.get("model_type") == "SparseEncoder") or (isinstance(modules, list) and any(
            str(m.get("type", "")).endswith("SpladePooling") for m in modules if isinstance(m, dict))):
        return "splade"
    if isinstance(modules, list) and any(str(m.get("type", "")).endswith("Pooling") for m in modules if isinstance(m, dict)):
        return "embedder"
    adapter = _read_json(path / "adapter_config.json")
    if isinstance(adapter, dict):
        task = str(adapter.get("task_type", ""))
        if task == "SEQ_CLS":
            return "llm_seqcls"
        if task == "CAUSAL_LM":
            return "llm_yes"
    config = _read_json(path / "config.json")
    if isinstance(config, dict):
        fam = family_from_config(config)
        if fam:
            return fam
    raise UserError(
        f"cannot tell which kind of reranker {path} holds (no ragr.json, colbert_linear.pt, sentence-transformers "
        "Pooling, or *ForSequenceClassification / *ForCausalLM architecture in config.json); pass the family "
        "explicitly (family=... / --family)"
    )


#: inference backends: PyTorch, or ONNX Runtime on a folder written by ``ragr export``
BACKENDS = ("torch", "onnx")
#: files holding PyTorch / safetensors weights (a folder with none of these and an ONNX file is ONNX-only)
_TORCH_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def detect_backend(path: str | Path, backend: str | None = None) -> str:
    """``torch`` or ``onnx`` for the model folder ``path``.

    ``backend`` given (``torch`` / ``onnx``) is checked and returned; None or ``auto``: ``onnx`` when
    ``ragr.json`` records an ONNX export (``ragr export``), or the folder has ``onnx/model.onnx`` and no
    PyTorch weights; else ``torch``.
    """
    if backend not in (None, "auto", *BACKENDS):
        from ragr.errors import did_you_mean

        raise UserError(f"unknown backend '{backend}'{did_you_mean(str(backend), ['auto', *BACKENDS])}; "
                        f"choices: auto, {', '.join(BACKENDS)}")
    if backend in BACKENDS:
        return backend
    path = Path(path)
    meta = _read_json(path / "ragr.json")
    if isinstance(meta, dict) and isinstance(meta.get("onnx"), dict):
        return "onnx"
    if (path / "onnx" / "model.onnx").is_file() and not any(any(path.glob(p)) for p in _TORCH_WEIGHTS):
        return "onnx"
    return "torch"
