"""Model cards: a hub-compatible ``README.md`` beside every saved model (``run_dir/model/``, ``run_dir/best/``).

The front matter is built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` /
:class:`~huggingface_hub.EvalResult` (``base_model``, ``library_name``, ``pipeline_tag``, ``tags``,
``datasets``, and a ``model-index`` holding the dev metrics of the saved weights), so
``ModelCard.load(path)`` parses it and the hub accepts it. The body tells how the model was made: the
command, data hashes, the training loss curve (from ``metrics.jsonl``), the evaluation before and
after, the resolved config, and how to use it (ragr, and sentence-transformers or transformers).

Everything comes from what the run already wrote (``metrics.jsonl``, ``manifest.json``) and the config:
writing a card is cheap (no data file is hashed twice) and :func:`write_model_card` never raises, so a
card can never cost a trained model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ragr.errors import UserError

CARD_FILE = "README.md"
MAX_LOSS_ROWS = 20
#: families whose folders sentence-transformers loads (SentenceTransformer / CrossEncoder)
_ST_FAMILIES = {"embedder": "SentenceTransformer", "cross_encoder": "CrossEncoder"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_HEADLINE = ("ndcg@10", "mrr@10", "map", "recall@10", "teacher_spearman", "teacher_top1")
_NOT_DEV = ("num_", "teacher_", "agreement_")  # counts and distillation agreement are not dev-set metrics


def write_model_card(folder: str | os.PathLike, cfg: dict[str, Any], metrics: dict[str, float] | None = None,
                     step: int | None = None, name: str = "model") -> bool:
    """Write ``folder/README.md`` for the model just saved there; never raises.

    Args:
        folder: the folder holding the saved model (the engine's temp folder, before it is renamed).
        cfg: the resolved run config (``output_dir`` is the run directory).
        metrics: the dev metrics of these weights (None: looked up in ``metrics.jsonl`` at ``step``).
        step: the optimizer step the weights are from.
        name: the folder's final name in the run directory (``model`` or ``best``).

    Returns:
        True when the card was written; False (with a one-line warning on stderr) when it could not be.
    """
    folder = Path(folder)
    try:
        text = render_model_card(folder, cfg, metrics=metrics, step=step, name=name)
        (folder / CARD_FILE).write_text(text, encoding="utf-8")
        return True
    except Exception as exc:  # noqa: BLE001 - the model is saved whatever happens to its card
        from ragr.ui import eprint

        eprint(f"warning: no model card written in {folder.name} ({type(exc).__name__}: {exc}); the model itself is complete")
        return False


def render_model_card(folder: str | os.PathLike, cfg: dict[str, Any], metrics: dict[str, float] | None = None,
                      step: int | None = None, name: str = "model") -> str:
    """The text of the card (front matter + markdown); it parses with ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard

    info = _RunInfo(Path(folder), cfg, metrics, step, name)
    data = info.card_data()
    text = f"---\n{data.to_yaml()}\n---\n\n{info.body()}"
    ModelCard(text)  # raises on front matter the hub's parser would refuse: caught by write_model_card
    return text


# ---- where things come from -------------------------------------------------------------------
def hub_id(name_or_path: str | None) -> tuple[str | None, str | None]:
    """``(hub id, revision)`` of a model named by ``name_or_path``, or ``(None, None)`` when it has none.

    A hub id or a ragr alias names itself; the bundled MiniLM is ``sentence-transformers/all-MiniLM-L6-v2``;
    a folder in the Hugging Face cache (``.../models--ORG--NAME/snapshots/REV``) is ``ORG/NAME`` at ``REV``.
    Any other local folder has no hub id (the hub refuses a path as ``base_model``).
    """
    if not name_or_path:
        return None, None
    from ragr.models.hub import ALIASES

    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.exists():
        repo = ALIASES.get(text, text)
        return (repo, None) if _HUB_ID.match(repo) and not text.startswith((".", "/", "~")) else (None, None)
    try:
        from ragr.config.resolvers import bundled

        if path.resolve() == Path(bundled("minilm")).resolve():
            return ALIASES["minilm"], None
    except Exception:  # noqa: BLE001 - no bundled package: just not that model
        pass
    parts = path.resolve().parts
    for i, part in enumerate(parts):
        if part.startswith("models--") and len(part) > len("models--"):
            repo = part[len("models--"):].replace("--", "/")
            rev = parts[i + 2] if i + 2 < len(parts) and parts[i + 1] == "snapshots" else None
            return (repo, rev) if _HUB_ID.match(repo) else (None, None)
    return None, None


def parse_hf_spec(spec: Any) -> dict[str, str | None] | None:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> ``{"name", "config", "split"}`` (:func:`ragr.data.sources.parse_hub`);
    None for anything else, a malformed hub name included (a card never fails on it)."""
    from ragr.data.sources import HF_PREFIX, parse_hub

    if not isinstance(spec, str) or not spec.startswith(HF_PREFIX):
        return None
    try:
        hub = parse_hub(spec)
    except UserError:
        return None
    return {"name": hub.name, "config": hub.config, "split": hub.split}


def read_metrics_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (unreadable lines skipped)."""
    path = run_dir / "metrics.jsonl"
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def loss_rows(records: list[dict[str, Any]], step: int | None = None, limit: int = MAX_LOSS_ROWS) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the training-loss records up to ``step``, at most ``limit`` rows evenly spread
    over the run (the first and the last always kept)."""
    recs = [r for r in records if "event" not in r and isinstance(r.get("loss"), (int, float))
            and isinstance(r.get("step"), int) and (step is None or r["step"] <= step)]
    if len(recs) > limit >= 2:
        n = len(recs)
        keep = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
        recs = [recs[i] for i in keep]
    extra: list[str] = []
    for r in recs:
        for k, v in r.items():
            if k not in ("step", "epoch", "loss", "lr", "samples_per_s") and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and k not in extra:
                extra.append(k)
    cols = ["step", "epoch", "loss", *extra, "lr"]
    return cols, [[r.get(c) for c in cols] for r in recs]


class _RunInfo:
    """What the card says about one saved model, gathered once."""

    def __init__(self, folder: Path, cfg: dict[str, Any], metrics: dict[str, float] | None, step: int | None,
                 name: str) -> None:
        self.folder, self.cfg, self.name = folder, cfg, name
        self.run_dir = Path(str(cfg.get("output_dir") or folder.parent))
        self.final_path = self.run_dir / name
        self.distill = "student" in cfg
        self.node: dict[str, Any] = dict((cfg.get("student") if self.distill else cfg.get("model")) or {})
        self.family = str(self.node.get("family") or _read_json(folder / "ragr.json").get("family") or "model")
        self.records = read_metrics_log(self.run_dir)
        self.manifest = _read_json(self.run_dir / "manifest.json")
        self.step = step
        self.metrics = dict(metrics) if metrics else self._logged_eval(step)
        self.before = self._logged_eval(0, events=("eval_before",))
        self.base, self.base_rev = hub_id(self.node.get("name_or_path"))
        self.data = dict(cfg.get("data") or {})
        self.adapter = (folder / "adapter_config.json").is_file()

    def _logged_eval(self, step: int | None, events=("eval_after", "eval_step", "eval_before")) -> dict[str, float] | None:
        if step is None:
            return None
        for event in events:
            found = [r for r in self.records if r.get("event") == event and r.get("step") == step]
            if found:
                return {k[len("eval/"):]: v for k, v in found[-1].items() if k.startswith("eval/")}
        return None

    # ---- front matter ---------------------------------------------------------------------------
    def library(self) -> str | None:
        if self.adapter:
            return "peft"
        if (self.folder / "modules.json").is_file() or self.family == "cross_encoder":
            return "sentence-transformers"
        if (self.folder / "config.json").is_file():
            return "transformers"
        return None

    def pipeline_tag(self) -> str | None:
        from ragr.families import get_family

        try:
            produces = tuple(get_family(self.family).produces)
        except Exception:  # noqa: BLE001 - an unknown family: no tag rather than no card
            return None
        if "vectors" in produces:
            return "sentence-similarity"
        if "multivectors" in produces or "sparse" in produces:  # as sentence-transformers tags its multi-vector / sparse encoders
            return "feature-extraction"
        if "pair_scores" in produces:
            return "text-ranking"
        return None

    def tags(self) -> list[str]:
        tags = ["ragr", self.family.replace("_", "-")]
        if self.library() == "sentence-transformers":
            tags.append("sentence-transformers")
        tags += {"embedder": ["sentence-similarity", "feature-extraction"], "cross_encoder": ["cross-encoder", "reranker"],
                 "colbert": ["colbert", "late-interaction"], "splade": ["sparse-encoder", "splade"], "llm_seqcls": ["reranker"], "llm_yes": ["reranker"]}.get(self.family, [])
        if self.adapter:
            tags.append("lora")
        loss = (self.cfg.get("loss") or {}).get("name")
        if loss:
            tags.append(f"loss:{loss}")
        if self.distill:
            tags.append("distillation")
        return list(dict.fromkeys(tags))

    def datasets(self) -> list[str] | None:
        names = [h["name"] for h in (parse_hf_spec(self.data.get("train")),) if h]
        return names or None

    def dev_dataset(self) -> dict[str, Any]:
        spec = self.data.get("eval")
        hf = parse_hf_spec(spec)
        if hf:
            return {"dataset_type": hf["name"], "dataset_name": hf["name"], "dataset_config": hf["config"],
                    "dataset_split": hf["split"]}
        file = Path(str(spec)).name if spec else "dev"
        return {"dataset_type": Path(file).name.split(".")[0] or "dev", "dataset_name": file}

    def dev_metrics(self) -> dict[str, float]:
        if not self.metrics or not self.data.get("eval"):
            return {}
        return {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and not k.startswith(_NOT_DEV) and math.isfinite(float(v))}

    def model_name(self) -> str:
        return str(self.cfg.get("name") or self.run_dir.name)

    def card_data(self):
        from huggingface_hub import EvalResult, ModelCardData

        ds = self.dev_dataset()
        results = [EvalResult(task_type="text-ranking", task_name="Reranking (dev)", metric_type=k, metric_value=v,
                              metric_name=k, **ds)
                   for k, v in self.dev_metrics().items()]
        return ModelCardData(base_model=self.base, library_name=self.library(), pipeline_tag=self.pipeline_tag(),
                             tags=self.tags(), datasets=self.datasets(), model_name=self.model_name(),
                             eval_results=results or None)

    # ---- body -----------------------------------------------------------------------------------
    def body(self) -> str:
        sections = [self._intro(), self._evaluation(), self._usage(), self._training(), self._environment()]
        return "\n\n".join(s for s in sections if s).rstrip() + "\n"

    def _intro(self) -> str:
        what = {"embedder": "a sentence embedding model (bi-encoder)", "cross_encoder": "a cross-encoder reranker",
                "colbert": "a ColBERT (late-interaction) retrieval model", "splade": "a SPLADE sparse retrieval model",
                "llm_seqcls": "an LLM reranker (classification head)",
                "llm_yes": "an LLM reranker (the logit of \"yes\")"}.get(self.family, f"a `{self.family}` model")
        source = self.node.get("name_or_path")
        if self.base:
            base = f"[{self.base}](https://huggingface.co/{self.base})" + (f" (revision `{self.base_rev}`)" if self.base_rev else "")
        else:
            base = f"the local model `{source}`" if source else "an unrecorded model"
        loss = (self.cfg.get("loss") or {}).get("name")
        how = f"distilled from the teacher `{(self.cfg.get('teacher') or {}).get('name_or_path')}`" if self.distill \
            else "fine-tuned"
        lines = [f"# {self.model_name()}", "",
                 f"This is {what}, {how} from {base} with ragr"
                 + (f" (loss `{loss}`)" if loss else "") + "."]
        total = (self.cfg.get("trainer") or {}).get("max_steps")
        if self.name == "best":
            t = self.cfg.get("trainer") or {}
            best = _read_json(self.folder / "best.json")
            metric = best.get("metric") or t.get("best_metric") or "ndcg@10"
            lines += ["", f"These are the weights of step {self.step} ({'before training' if self.step == 0 else 'during training'}): "
                          f"the best `{metric}` on the dev data of the evaluations every {t.get('eval_every')} steps "
                          f"(`trainer.eval_every`). The final weights are in `model/` beside this folder."]
        elif self.step is not None:
            lines += ["", f"Weights after {self.step} optimizer steps" + (f" of {total}." if total and total != self.step else ".")]
        return "\n".join(lines)

    def _evaluation(self) -> str:
        head = "## Evaluation"
        if not self.metrics and not self.before:
            return f"{head}\n\nNo dev evaluation was run (pass `data.eval=dev.jsonl` to measure one)."
        where = self.data.get("eval")
        note = f"On the dev data `{where}`" if where else "During training"
        now = self.metrics or {}
        counts = {k: v for k, v in {**(self.before or {}), **now}.items() if k.startswith("num_")}
        keys = [k for k in dict.fromkeys([*now, *(self.before or {})]) if not k.startswith("num_")]
        cols = ["metric"]
        if self.before is not None:
            cols.append("before training (step 0)")
        if self.metrics:
            cols.append(f"this model (step {self.step})" if self.step is not None else "this model")
        if self.before is not None and self.metrics and self.step != 0:
            cols.append("change")
        rows = []
        for k in keys:
            row: list[Any] = [k]
            b, a = (self.before or {}).get(k), now.get(k)
            if self.before is not None:
                row.append(b)
            if self.metrics:
                row.append(a)
            if len(cols) == 4:
                row.append(f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "")
            rows.append(row)
        count = ", ".join(f"{k[4:]}: {int(v)}" for k, v in counts.items() if isinstance(v, (int, float)))
        best = (self.cfg.get("trainer") or {}).get("best_metric") or "ndcg@10"
        main = [r for r in rows if r[0] in (best, *_HEADLINE)]
        text = f"{head}\n\n{note}" + (f" ({count})" if count else "") + ":\n\n" + _table(cols, main or rows)
        if main and len(main) < len(rows):
            text += f"\n\n<details><summary>All {len(rows)} metrics</summary>\n\n{_table(cols, rows)}\n\n</details>"
        return text

    def _usage(self) -> str:
        path = str(self.final_path)
        out = ["## Usage", "", "With ragr (scores any family; `pip install ragr`):", "", _fence(
            f"from ragr import Reranker\n\nreranker = Reranker({path!r})  # or the hub id, once pushed\n"
            'print(reranker.rank("how do I reset my password?",\n'
            '                    ["Open settings and click reset password.", "Paris is the capital of France."]))', "python"),
            "", "On the command line:", "", _fence(
                f"ragr rerank --model {shlex.quote(path)} < pairs.jsonl > scored.jsonl\n"
                f"ragr eval model.name_or_path={shlex.quote(path)} data.eval=dev.jsonl", "bash")]
        if self.family == "embedder" and not self.adapter:
            out += ["", "With sentence-transformers:", "", _fence(
                f"from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer({path!r})\n"
                'queries = model.encode(["how do I reset my password?"], prompt_name="query")\n'
                'docs = model.encode(["Open settings and click reset password.", "Paris is the capital of France."],\n'
                '                    prompt_name="document")\n'
                "print(model.similarity(queries, docs))", "python")]
        elif self.family == "cross_encoder" and not self.adapter:
            out += ["", "With sentence-transformers:", "", _fence(
                f"from sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder({path!r})\n"
                'print(model.rank("how do I reset my password?",\n'
                '                 ["Open settings and click reset password.", "Paris is the capital of France."]))', "python")]
        elif self.family == "splade" and (self.folder / "modules.json").is_file():
            out += ["", "With sentence-transformers:", "", _fence(
                f"from sentence_transformers import SparseEncoder\n\nmodel = SparseEncoder({path!r})\n"
                'queries = model.encode(["how do I reset my password?"])\n'
                'docs = model.encode(["Open settings and click reset password.", "Paris is the capital of France."])\n'
                "print(model.similarity(queries, docs))", "python")]
        elif self.adapter:
            base = self.base or self.node.get("name_or_path") or "BASE_MODEL"
            auto = {"llm_seqcls": "AutoPeftModelForSequenceClassification", "llm_yes": "AutoPeftModelForCausalLM"}.get(
                self.family, "AutoPeftModel")
            out += ["", "With peft (this folder is a LoRA adapter; the prompt format is in `ragr.json`):", "", _fence(
                f"from peft import {auto}\n\nmodel = {auto}.from_pretrained({path!r})  # base: {base}", "python")]
        elif (self.folder / "config.json").is_file():
            auto = {"llm_seqcls": "AutoModelForSequenceClassification", "llm_yes": "AutoModelForCausalLM"}.get(self.family, "AutoModel")
            extra = {"colbert": "  # the token projection is colbert_linear.pt; options in ragr.json",
                     "llm_seqcls": "  # the prompt format is in ragr.json", "llm_yes": "  # the prompt format is in ragr.json"}
            out += ["", "The weights load with transformers:", "", _fence(
                f"from transformers import AutoTokenizer, {auto}\n\ntokenizer = AutoTokenizer.from_pretrained({path!r})\n"
                f"model = {auto}.from_pretrained({path!r}){extra.get(self.family, '')}", "python")]
        return "\n".join(out)

    def _training(self) -> str:
        out = ["## Training", "", "### Command", "", _fence(_command(), "bash")]
        starts = self.manifest.get("previous") or []
        if starts:
            out += ["", f"Resumed; the run was started {len(starts)} time(s) before: "
                        + "; ".join(f"`{_join(p.get('command') or [])}` ({p.get('created', '?')})" for p in starts)]
        out += ["", "### Data", "", self._data_table()]
        cols, rows = loss_rows(self.records, self.step)
        if rows:
            n = len([r for r in self.records if "event" not in r and "loss" in r])
            out += ["", "### Training loss", "", (f"{len(rows)} of the {n} logged steps:\n\n" if n > len(rows) else "")
                    + _table(cols, rows)]
        from ragr.config import to_yaml

        out += ["", "### Configuration", "", "<details><summary>The resolved config (config.yaml)</summary>", "",
                _fence(to_yaml(self.cfg).rstrip(), "yaml"), "", "</details>"]
        return "\n".join(out)

    def _data_table(self) -> str:
        recorded = self.manifest.get("data") or {}
        rows = []
        for key in ("train", "eval"):
            spec = self.data.get(key)
            if not spec:
                continue
            entry = recorded.get(spec) if isinstance(recorded, dict) else None
            sha = size = ""
            if isinstance(entry, dict) and entry.get("sha256"):
                sha, size = entry["sha256"], entry.get("bytes", "")
            elif parse_hf_spec(spec):
                sha = "(hub dataset)"
            elif Path(str(spec)).is_file():
                sha, size = _sha256_cached(str(spec)), os.path.getsize(spec)
            rows.append([f"data.{key}", f"`{spec}`", f"`{sha}`" if len(str(sha)) == 64 else sha, size])
        teacher = self.cfg.get("teacher") or {}
        if self.distill and teacher:
            rows.append(["teacher", f"`{teacher.get('name_or_path')}` ({teacher.get('family')})", "", ""])
        return _table(["role", "source", "sha256", "bytes"], rows) if rows else "No data files recorded."

    def _environment(self) -> str:
        versions = self.manifest.get("versions") or {}
        if not versions:
            return ""
        items = ", ".join(f"{k} {v}" for k, v in versions.items())
        rev = self.manifest.get("git_rev")
        return "## Environment\n\n" + items + (f"; ragr at git `{rev}`" if rev else "") + "."


# ---- small helpers ---------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: str) -> str:
    from ragr.fileio import sha256_file

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _join(argv: list[str]) -> str:
    argv = [str(a) for a in argv]
    if argv and Path(argv[0]).name in ("ragr", "ragr.exe", "__main__.py"):
        argv = ["ragr", *argv[1:]]
    return shlex.join(argv)


def _command() -> str:
    return _join(sys.argv) or "(unknown)"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(cols: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fence(text: str, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any run of backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"
