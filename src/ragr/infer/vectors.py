"""Teacher vectors for Stella/Jasper stage 3: embed a text JSONL with one or more embedders into a float32 .npy.

Each model's vectors are L2-normalized, then the models are concatenated in the order given
(``[N, d1 + d2 + ...]``), as RAG-Retrieval does for its two 1792-d teachers. Rows are written
block by block into memory-mapped files, so neither the texts nor the vectors are ever held whole;
one model is loaded at a time.

Input lines: ``{"text": str}`` (``{"query": str}`` is read too), optionally with ``"prompt"`` (or
``"prompt_for_query"``) prepended to the text; ``"teacher_prompt"``, when present, replaces it for
the teachers only (the student keeps ``"prompt"``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragr.errors import UserError

BLOCK = 4096  # texts per block


def text_checker(path: str):
    from ragr.data.jsonl import require_str

    def check(obj: dict, lineno: int) -> None:
        require_str(obj, "text" if "text" in obj or "query" not in obj else "query", path, lineno)
        for key in ("prompt", "prompt_for_query", "teacher_prompt"):
            if key in obj and not isinstance(obj[key], str):
                from ragr.errors import DataError

                raise DataError(path, lineno, f"must be a string, got {json.dumps(obj[key])[:60]}", field=key)

    return check


def teacher_text(rec: dict[str, Any]) -> str:
    """The text a teacher embeds: ``teacher_prompt`` (else ``prompt`` / ``prompt_for_query``) + ``text``."""
    prompt = rec["teacher_prompt"] if "teacher_prompt" in rec else (rec.get("prompt") or rec.get("prompt_for_query") or "")
    return prompt + (rec["text"] if "text" in rec else rec["query"])


def _auto_dtype(dtype: str):
    import torch

    from ragr.device import compute_dtype

    return compute_dtype(dtype) or torch.float32


def embed_file(models: Sequence[str], input_path: str, output_path: str, batch_size: int = 64, dtype: str = "auto",
               max_length: int | None = None, console=None, columns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the normalized, concatenated vectors of every line of ``input_path`` to ``output_path`` (.npy).

    ``input_path`` is any :mod:`ragr.data.sources` source; ``columns`` maps its column names (``text=sentence``).

    Returns the provenance written beside it (``<output>.json``): models, their widths, rows, input hash.
    """
    import torch
    import torch.nn.functional as F

    from ragr.data.sources import fingerprint, index_records
    from ragr.models.embedder import Embedder
    from ragr.models.hub import resolve_model_path

    if not models:
        raise UserError("give at least one --model")
    out = Path(output_path)
    if out.suffix != ".npy":
        raise UserError(f"--output {output_path}: the vectors file must end in .npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    index = index_records(input_path, text_checker(str(input_path)), columns=columns)
    paths = [resolve_model_path(m, key="--model") for m in models]  # every model resolves before any work
    n = len(index)
    from ragr.device import default_device

    device = str(default_device())
    torch_dtype = _auto_dtype(dtype)
    parts, dims = [], []
    t0 = time.perf_counter()
    try:
        for k, (name, path) in enumerate(zip(models, paths)):
            opts = {"max_doc_length": max_length} if max_length else {}
            model = Embedder.from_pretrained(path, key="--model", **opts).to(device=device, dtype=torch_dtype).eval()
            part_path = out.with_name(f".{out.stem}.part{k}.npy")
            part = np.lib.format.open_memmap(part_path, mode="w+", dtype=np.float32, shape=(n, model.dim))
            parts.append(part_path)
            dims.append(model.dim)
            progress = console.progress(f"embed {name}", n) if console is not None else None
            with progress if progress is not None else _null() as advance:
                for a in range(0, n, BLOCK):
                    texts = [teacher_text(index[i]) for i in range(a, min(n, a + BLOCK))]
                    vecs = model.encode(texts, is_query=False, batch_size=batch_size)
                    part[a : a + len(texts)] = F.normalize(vecs.float(), dim=-1).numpy()
                    if advance is not None:
                        advance(len(texts))
            part.flush()
            del part, model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        tmp = out.with_name(f".{out.stem}.tmp.npy")
        if len(parts) == 1:
            os.replace(parts[0], tmp)
        else:
            whole = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, sum(dims)))
            srcs = [np.load(p, mmap_mode="r") for p in parts]
            for a in range(0, n, BLOCK * 4):
                whole[a : a + BLOCK * 4] = np.concatenate([s[a : a + BLOCK * 4] for s in srcs], axis=1)
            whole.flush()
            del whole, srcs
        os.replace(tmp, out)
    finally:
        for p in parts:
            if p.exists():
                p.unlink()
    meta = {"models": list(models), "paths": [str(p) for p in paths], "dims": dims, "rows": n, "dim": sum(dims),
            "normalized": "each model L2-normalized, then concatenated", "input": str(input_path),
            "input_sha256": fingerprint(input_path)["sha256"], "dtype": str(torch_dtype).removeprefix("torch."),
            "seconds": round(time.perf_counter() - t0, 3)}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta


class _null:
    def __enter__(self) -> Callable[[int], None] | None:
        return None

    def __exit__(self, *exc) -> None:
        return None
