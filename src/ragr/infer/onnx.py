"""ONNX Runtime backend: export cross-encoders and embedders to ONNX (fp32, int8, fp16) and score with them.

Export (:func:`export_onnx`, ``ragr export``): the model is traced by PyTorch's ONNX exporter
(``torch.onnx.export``, TorchScript path, as optimum exports) into ``onnx/model.onnx``, checked
against PyTorch on probe inputs, and optionally quantized by ONNX Runtime: ``int8`` is
``onnxruntime.quantization.quantize_dynamic`` with the settings of optimum's
``AutoQuantizationConfig.<target>(is_static=False)`` (per-channel symmetric weights, uint8
activations, every operator ONNX Runtime's dynamic quantizer handles), written as
``onnx/model_<qint8|quint8>_<target>.onnx``; ``fp16`` is ONNX Runtime's float16 converter
(``onnx/model_fp16.onnx``, fp32 inputs and outputs). The output folder is a copy of the model
folder plus ``onnx/`` (the layout sentence-transformers reads with ``backend="onnx"``), and
``ragr.json`` records the export under ``"onnx"``: ``file_name`` is the file ragr scores with
(the quantized one when there is one).

Scoring: :class:`OnnxCrossEncoder` and :class:`OnnxEmbedderScorer` are :class:`ragr.infer.Scorer`
families for :class:`ragr.infer.Reranker` (``backend="onnx"``); the cross-encoder tokenizes pairs up
front like the PyTorch one, so the Reranker's length-sorted token-budget batching applies unchanged.
Inputs and outputs follow optimum's names (``input_ids``, ``attention_mask``, ``token_type_ids`` ->
``logits`` / ``last_hidden_state``), with dynamic ``batch_size`` and ``sequence_length`` axes.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'ragr[onnx]'``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from ragr.errors import UserError
from ragr.infer.base import Scorer
from ragr.infer.embedder import EmbedderScorer

ONNX_DIR = "onnx"
FP32_FILE = f"{ONNX_DIR}/model.onnx"
#: ``--quantize`` choices
QUANTIZE = ("int8", "fp16")
#: int8 presets, as optimum's ``AutoQuantizationConfig``: target -> weight type (activations are uint8)
INT8_TARGETS = {"arm64": "QInt8", "avx2": "QUInt8", "avx512": "QInt8", "avx512_vnni": "QInt8"}
#: families the ONNX backend scores and exports
FAMILIES = ("cross_encoder", "embedder")
#: ONNX opset of the export (ONNX Runtime >= 1.14 runs it)
OPSET = 17
INSTALL_HINT = "pip install 'ragr[onnx]'"


# ---- dependencies and folder metadata -------------------------------------------------------------
def require_onnx(what: str = "the ONNX backend") -> None:
    """Raise a UserError naming the extra to install when onnx / onnxruntime cannot be imported."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError as exc:
            raise UserError(f"{what} needs {module} ({exc}); install it with: {INSTALL_HINT}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def onnx_info(path: str | Path) -> dict:
    """The ``"onnx"`` entry ``ragr export`` wrote into the folder's ``ragr.json`` (empty if none)."""
    info = _read_json(Path(path) / "ragr.json").get("onnx")
    return info if isinstance(info, dict) else {}


def onnx_files(path: str | Path) -> list[str]:
    """The ``.onnx`` files of a model folder, relative to it (``onnx/model.onnx`` ...), sorted."""
    root = Path(path)
    return sorted(p.relative_to(root).as_posix() for p in root.glob("**/*.onnx") if p.is_file())


def onnx_file(path: str | Path, file_name: str | None = None) -> Path:
    """The ONNX file to score with: ``file_name`` (relative to the folder, or under ``onnx/``), else
    the one ``ragr.json`` names, else ``onnx/model.onnx`` (or ``model.onnx``)."""
    root = Path(path)
    candidates = [file_name] if file_name else [onnx_info(root).get("file_name"), FP32_FILE, "model.onnx"]
    for name in candidates:
        if not name:
            continue
        for f in (root / name, root / ONNX_DIR / name):
            if f.is_file():
                return f
    found = onnx_files(root)
    if file_name:
        raise UserError(f"{root}: no ONNX file '{file_name}'" + (f" (found: {', '.join(found)})" if found else ""))
    raise UserError(f"{root} holds no ONNX model (no {FP32_FILE}); export it first: "
                    f"ragr export --model {root} --format onnx --output DIR")


# ---- sessions -------------------------------------------------------------------------------------
def _providers(device: Any) -> list:
    import onnxruntime as ort

    dev = str(device or "cpu")
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"device {dev}: this onnxruntime has no CUDA provider (available: "
                            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu")
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise UserError(f"device {dev}: the ONNX backend runs on cpu or cuda")


def auto_device() -> str:
    """``cuda`` when onnxruntime has its CUDA provider and a GPU is there, else ``cpu``."""
    require_onnx()
    import onnxruntime as ort
    import torch

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available() else "cpu"


def make_session(file: str | Path, device: Any = "cpu", threads: int | None = None):
    """An ONNX Runtime session on ``file`` (all graph optimizations); CPU threads: ``threads``, else
    torch's thread count (so ``torch.set_num_threads`` and ``ragr serve --threads`` apply here too)."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no notes about nodes kept on the CPU
    try:
        return ort.InferenceSession(str(file), sess_options=opts, providers=_providers(device))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(f"onnxruntime cannot load {file}: {str(exc).strip().splitlines()[0][:300]}") from None


def _feeds(session, batch: dict) -> dict:
    """numpy int64 feeds for the session's inputs; ``token_type_ids`` zeros when the batch has none."""
    import numpy as np

    out = {}
    for inp in session.get_inputs():
        if inp.name in batch:
            value = batch[inp.name]
            out[inp.name] = np.ascontiguousarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.int64)
        elif inp.name == "token_type_ids":
            out[inp.name] = np.zeros_like(np.asarray(batch["input_ids"]), dtype=np.int64)
        elif inp.name == "attention_mask":
            out[inp.name] = np.ones_like(np.asarray(batch["input_ids"]), dtype=np.int64)
        else:
            raise UserError(f"the ONNX model wants an input '{inp.name}' that ragr does not make")
    return out


def _check_dtype(dtype: Any) -> None:
    import torch

    if dtype is not None and dtype != torch.float32:
        raise UserError("--dtype applies to the torch backend; an ONNX model's precision is fixed when it is "
                        "exported (ragr export --quantize int8|fp16)")


# ---- scorers --------------------------------------------------------------------------------------
def _cross_encoder_methods():
    from ragr.models.cross_encoder import CrossEncoder

    return CrossEncoder


class OnnxCrossEncoder(Scorer):
    """A cross-encoder exported to ONNX, scored by ONNX Runtime (one logit, or logit 1 - logit 0 for two labels).

    Tokenization, truncation (longest first to ``max_length``), padding and ``max-chunk`` budgets are
    those of :class:`ragr.models.cross_encoder.CrossEncoder`, so scores equal the PyTorch model's up to
    float rounding (fp32) or quantization error (int8).
    """

    family = "cross_encoder"
    backend = "onnx"

    def __init__(self, session, tokenizer, max_length: int, file: Path, device: str = "cpu") -> None:
        self.session, self.tokenizer, self.max_length = session, tokenizer, int(max_length)
        self.file, self.device_type = file, "cpu" if str(device) == "cpu" else "cuda"
        self.output = "logits" if "logits" in [o.name for o in session.get_outputs()] else session.get_outputs()[0].name

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             file_name: str | None = None, threads: int | None = None, **options: Any) -> OnnxCrossEncoder:
        if options:
            raise TypeError(f"unexpected argument(s) for the ONNX cross-encoder: {', '.join(options)}")
        require_onnx()
        _check_dtype(dtype)
        from transformers import AutoConfig, AutoTokenizer

        from ragr.models.cross_encoder import _read_ragr_json, default_max_length

        root = Path(path)
        file = onnx_file(root, file_name)
        tokenizer = AutoTokenizer.from_pretrained(root)
        if max_length is None:
            max_length = _read_ragr_json(root).get("max_length") or default_max_length(tokenizer, AutoConfig.from_pretrained(root))
        return cls(make_session(file, device, threads), tokenizer, max_length, file, str(device or "cpu"))

    # the PyTorch cross-encoder's tokenization, padding and max-chunk budget, shared (not copied)
    def tokenize_pairs(self, queries: list[str], docs: list[str]) -> list[dict[str, list[int]]]:
        return _cross_encoder_methods().tokenize_pairs(self, queries, docs)

    def pad_features(self, features: list[dict[str, list[int]]]) -> dict:
        return _cross_encoder_methods().pad_features(self, features)

    def doc_budget(self, query: str) -> int:
        return _cross_encoder_methods().doc_budget(self, query)

    def score_tokenized(self, features: list[dict[str, list[int]]]) -> list[float]:
        logits = self.session.run([self.output], _feeds(self.session, self.pad_features(features)))[0]
        logits = logits.astype("float32").reshape(len(features), -1)
        if logits.shape[1] == 1:
            return logits[:, 0].tolist()
        if logits.shape[1] == 2:
            return (logits[:, 1] - logits[:, 0]).tolist()
        raise ValueError(f"a cross-encoder needs 1 or 2 labels, this one has {logits.shape[1]}")

    def score_pairs(self, queries: list[str], docs: list[str]) -> list[float]:
        return self.score_tokenized(self.tokenize_pairs(queries, docs))


class OnnxEmbedder:
    """An embedder whose transformer runs in ONNX Runtime; pooling, Dense and normalization as in
    :class:`ragr.models.embedder.Embedder` (read from the folder's sentence-transformers modules), with
    the same arguments and defaults, so it stands in for it (``encode``, ``dim``, prompts, lengths)."""

    family = "embedder"

    def __init__(self, session, tokenizer, pooling: str = "mean", normalize: bool = True, dense=None,
                 max_query_length: int = 64, max_doc_length: int = 256, query_prompt: str = "", doc_prompt: str = "",
                 hidden_size: int = 0, file: Path | None = None) -> None:
        self.session, self.tokenizer, self.dense = session, tokenizer, dense
        self.pooling, self.normalize = pooling, normalize
        self.max_query_length, self.max_doc_length = max_query_length, max_doc_length
        self.query_prompt, self.doc_prompt = query_prompt, doc_prompt
        self.hidden_size, self.file = hidden_size, file
        names = [o.name for o in session.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in names else names[0]

    @classmethod
    def from_pretrained(cls, path: str, pooling: str | None = None, normalize: bool | None = None,
                        max_query_length: int = 64, max_doc_length: int = 256, query_prompt: str = "",
                        doc_prompt: str = "", padding_side: str | None = None, file_name: str | None = None,
                        device: Any = "cpu", threads: int | None = None) -> OnnxEmbedder:
        require_onnx()
        from transformers import AutoConfig, AutoTokenizer

        from ragr.models.embedder import _load_dense, _read_st_layout

        root = Path(path)
        st = _read_st_layout(root)
        tokenizer = AutoTokenizer.from_pretrained(root)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if padding_side is not None:
            tokenizer.padding_side = padding_side
        file = onnx_file(root, file_name)
        return cls(make_session(file, device, threads), tokenizer,
                   pooling=pooling or st.get("pooling", "mean"),
                   normalize=normalize if normalize is not None else (st["normalize"] if "pooling" in st else True),
                   dense=_load_dense(Path(st["dense_dir"])).eval() if "dense_dir" in st else None,
                   max_query_length=max_query_length, max_doc_length=max_doc_length,
                   query_prompt=st.get("query_prompt", query_prompt), doc_prompt=st.get("doc_prompt", doc_prompt),
                   hidden_size=int(AutoConfig.from_pretrained(root).hidden_size), file=file)

    @property
    def dim(self) -> int:
        return self.dense.out_features if self.dense is not None else self.hidden_size

    def tokenize(self, texts, is_query: bool) -> dict:
        prompt = self.query_prompt if is_query else self.doc_prompt
        max_len = self.max_query_length if is_query else self.max_doc_length
        return self.tokenizer([prompt + t for t in texts], padding=True, truncation=True, max_length=max_len,
                              return_tensors="np")

    def encode(self, texts, is_query: bool = False, batch_size: int = 64, progress=None):
        """Embed ``texts`` (length-sorted batches, as the PyTorch embedder); a float32 CPU tensor ``[N, dim]``."""
        import torch
        import torch.nn.functional as F

        from ragr.models.embedder import pool

        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + batch_size]
            feats = self.tokenize([texts[i] for i in idx], is_query)
            hidden = torch.from_numpy(self.session.run([self.output], _feeds(self.session, feats))[0]).float()
            emb = pool(hidden, torch.from_numpy(feats["attention_mask"]), self.pooling)
            if self.dense is not None:
                with torch.no_grad():
                    emb = self.dense(emb)
            out[idx] = F.normalize(emb, dim=-1) if self.normalize else emb
            if progress is not None:
                progress(len(idx))
        return out


class OnnxEmbedderScorer(EmbedderScorer):
    """Bi-encoder reranking (dot product of the vectors, cosine when the model normalizes) with an
    :class:`OnnxEmbedder`."""

    backend = "onnx"

    def __init__(self, model: OnnxEmbedder, device: str = "cpu") -> None:
        super().__init__(model)
        self.device_type = "cpu" if str(device) == "cpu" else "cuda"

    @classmethod
    def load(cls, path: str, *, device: Any = "cpu", dtype: Any = None, max_length: int | None = None,
             **options: Any) -> OnnxEmbedderScorer:
        _check_dtype(dtype)
        if max_length is not None:
            options["max_doc_length"] = max_length
        return cls(OnnxEmbedder.from_pretrained(path, device=device, **options), str(device or "cpu"))


def onnx_scorer_class(family: str) -> type:
    """The ONNX Runtime scorer of ``family`` (cross_encoder or embedder)."""
    if family == "cross_encoder":
        return OnnxCrossEncoder
    if family == "embedder":
        return OnnxEmbedderScorer
    raise UserError(f"the ONNX backend scores {' and '.join(FAMILIES)} models; this one is '{family}' "
                    "(use --backend torch)")


# ---- export ---------------------------------------------------------------------------------------
def default_int8_target() -> str:
    """The int8 preset for this CPU: arm64, avx512_vnni, avx512 or avx2 (optimum's names)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def int8_file_name(target: str) -> str:
    """sentence-transformers' name of a dynamic int8 model: ``onnx/model_qint8_avx512_vnni.onnx`` ..."""
    return f"{ONNX_DIR}/model_{INT8_TARGETS[target].lower()}_{target}.onnx"


def _traced(model, input_names: list[str], output: str):
    """What the exporter traces: ``model``'s forward on positional int64 inputs, returning one tensor."""
    import torch

    class Traced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return getattr(self.model(**dict(zip(input_names, inputs)), return_dict=True), output)

    return Traced().eval()


def _load_for_export(root: Path, family: str):
    """``(model, output name)``: the transformers model to export, fp32, eager attention (a plain graph)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(root)
    if family == "cross_encoder":
        if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
            raise UserError(f"{root} has no sequence-classification head (config.json architectures: "
                            f"{config.architectures}); train or save the cross-encoder first")
        cls, output = AutoModelForSequenceClassification, "logits"
    else:
        modules = _read_json_list(root / "modules.json")
        transformer = [m for m in modules if str(m.get("type", "")).endswith("Transformer")]
        if transformer and transformer[0].get("path", "") not in ("", "."):
            raise UserError(f"{root}: the transformer lives in the sub-folder '{transformer[0]['path']}'; "
                            "ragr exports embedders whose transformer is at the folder root (as ragr saves them)")
        cls, output = AutoModel, "last_hidden_state"
    import torch

    try:
        model = cls.from_pretrained(root, dtype=torch.float32, attn_implementation="eager")
    except (ValueError, TypeError):
        model = cls.from_pretrained(root, dtype=torch.float32)
    return model.eval(), output


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _probe_inputs(tokenizer, family: str, max_length: int, rows: tuple[int, ...] = (0, 1, 2)) -> dict:
    """A padded batch of inputs of different lengths (padding makes the attention mask matter)."""
    queries = ["what is onnx?", "how do I export a reranker to run fast on a cpu?", "int8"]
    docs = ["ONNX is an open format for machine learning models.",
            "Export it, quantize the weights to 8 bits, and score with ONNX Runtime. " * 3, "eight bits"]
    queries, docs = [queries[i] for i in rows], [docs[i] for i in rows]
    if family == "cross_encoder":
        return tokenizer(queries, docs, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt")
    return tokenizer([q + " " + d for q, d in zip(queries, docs)], padding=True, truncation=True,
                     max_length=max_length, return_tensors="pt")


def _run_file(file: Path, batch: dict, output: str):
    session = make_session(file, "cpu")
    return session.run([output], _feeds(session, batch))[0]


def quantize_int8(src: Path, dst: Path, target: str) -> None:
    """ONNX Runtime dynamic int8 quantization with optimum's ``AutoQuantizationConfig.<target>`` settings."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    def advice(record: logging.LogRecord) -> bool:  # its generic hint about static-quantization pre-processing
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=False,
                         weight_type=getattr(QuantType, INT8_TARGETS[target]),
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        root.removeFilter(advice)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute (ONNX Runtime's float16 converter), fp32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def export_onnx(model: str, output: str | Path, *, quantize: str | None = None, int8_target: str = "auto",
                family: str | None = None, overwrite: bool = False, console=None) -> dict:
    """Export the cross-encoder or embedder folder ``model`` to ONNX in a new folder ``output``.

    ``output`` gets a copy of the model folder plus ``onnx/model.onnx`` (fp32) and, with ``quantize``,
    ``onnx/model_<q>int8_<target>.onnx`` or ``onnx/model_fp16.onnx``; ``ragr.json`` records the export
    (``"onnx": {"file_name": ...}``: the file ragr scores with). Written in a temp folder, then moved
    into place. Returns that ``"onnx"`` record.

    Raises:
        UserError: unknown quantization or target, a missing model folder, a family ONNX does not cover,
            ``output`` already holding files (without ``overwrite``), onnx / onnxruntime not installed.
    """
    require_onnx("ragr export --format onnx")
    if quantize is not None and quantize not in QUANTIZE:
        from ragr.errors import did_you_mean

        raise UserError(f"--quantize {quantize}: unknown{did_you_mean(quantize, QUANTIZE)}; choices: {', '.join(QUANTIZE)}")
    if int8_target != "auto" and int8_target not in INT8_TARGETS:
        from ragr.errors import did_you_mean

        raise UserError(f"--int8-target {int8_target}: unknown{did_you_mean(int8_target, list(INT8_TARGETS))}; "
                        f"choices: auto, {', '.join(INT8_TARGETS)}")
    from ragr.infer.detect import detect_family
    from ragr.models.hub import resolve_model_path

    root = Path(resolve_model_path(str(model), key="--model"))
    family = family or detect_family(root)
    if family not in FAMILIES:
        raise UserError(f"ragr export --format onnx covers {' and '.join(FAMILIES)} models; {model} is '{family}'")
    out = Path(output).expanduser()
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise UserError(f"--output {output}: give a new folder outside the model folder (the export copies the model into it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--output {output} already holds files; pick a new folder or pass --overwrite")

    import warnings

    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoTokenizer

    say = console.print if console is not None else (lambda *a, **k: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(root, tmp, ignore=shutil.ignore_patterns(ONNX_DIR, ".*", "*.onnx", "*.onnx_data"))
        (tmp / ONNX_DIR).mkdir()
        tokenizer = AutoTokenizer.from_pretrained(root)
        net, out_name = _load_for_export(root, family)
        probe = _probe_inputs(tokenizer, family, 128)
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in probe]
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
        axes[out_name] = {0: "batch_size"} if family == "cross_encoder" else {0: "batch_size", 1: "sequence_length"}
        fp32 = tmp / FP32_FILE
        say(f"exporting {family} {model} to ONNX (opset {OPSET}) ...")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(_traced(net, names, out_name), tuple(probe[n] for n in names), str(fp32),
                              input_names=names, output_names=[out_name], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        # the export must compute what PyTorch computes, on inputs of another shape than the traced ones
        check = _probe_inputs(tokenizer, family, 128, rows=(2, 0))
        with torch.no_grad():
            ref = getattr(net(**{n: check[n] for n in names}), out_name).float().numpy()
        got = _run_file(fp32, check, out_name)
        diff = float(np.abs(got - ref).max())
        if not diff <= 1e-3 * max(1.0, float(np.abs(ref).max())):
            raise RuntimeError(f"the ONNX export of {model} differs from PyTorch by {diff:.3g} on the probe inputs")
        info: dict[str, Any] = {"file_name": FP32_FILE, "precision": "fp32", "files": {"fp32": FP32_FILE},
                                "opset": OPSET, "exporter": f"torch.onnx (TorchScript) {torch.__version__}",
                                "onnxruntime": onnxruntime.__version__, "source": str(model),
                                "inputs": names, "output": out_name, "max_abs_diff_fp32": diff}
        if quantize == "int8":
            target = default_int8_target() if int8_target == "auto" else int8_target
            name = int8_file_name(target)
            say(f"quantizing to int8 (dynamic, {target} preset) ...")
            quantize_int8(fp32, tmp / name, target)
            info.update(file_name=name, precision="int8", int8_target=target)
            info["files"]["int8"] = name
        elif quantize == "fp16":
            name = f"{ONNX_DIR}/model_fp16.onnx"
            say("converting to fp16 ...")
            convert_fp16(fp32, tmp / name)
            info.update(file_name=name, precision="fp16")
            info["files"]["fp16"] = name
        if quantize is not None:  # it loads and runs (its error is quantization's, not checked here)
            low = _run_file(tmp / info["file_name"], check, out_name)
            info[f"max_abs_diff_{quantize}"] = float(np.abs(low - ref).max())
        meta = _read_json(tmp / "ragr.json")
        meta.setdefault("family", family)
        meta["onnx"] = info
        (tmp / "ragr.json").write_text(json.dumps(meta, indent=2))
        from ragr.fileio import replace_dir

        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
