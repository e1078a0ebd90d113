"""Turn a model name (alias, local path or hub id) into a local directory, with a clear error offline."""

from __future__ import annotations

import re
from pathlib import Path

from ragr.errors import UserError

#: Short names for public models; values are Hugging Face Hub ids.
ALIASES: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "bge-base-zh": "BAAI/bge-base-zh-v1.5",
    "bge-base-en": "BAAI/bge-base-en-v1.5",
    "bge-m3": "BAAI/bge-m3",
    "chinese-roberta-wwm-ext": "hfl/chinese-roberta-wwm-ext",
}
# Rerankers (their prompt/format presets live in ragr.infer.presets).
ALIASES.update({
    "bge-reranker-base": "BAAI/bge-reranker-base",
    "bge-reranker-large": "BAAI/bge-reranker-large",
    "bge-reranker-v2-m3": "BAAI/bge-reranker-v2-m3",
    "bce-reranker-base_v1": "maidalun1020/bce-reranker-base_v1",
    "bge-reranker-v2-gemma": "BAAI/bge-reranker-v2-gemma",
    "qwen-reranker": "Qwen/Qwen3-Reranker-0.6B",
    "Qwen3-Reranker-0.6B": "Qwen/Qwen3-Reranker-0.6B",
    "ms-marco-MiniLM-L6-v2": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
})
# Embedders for distillation (issue 5): LLM embedders and the Stella/Jasper stage-3 teachers.
ALIASES.update({
    "qwen3-embedding-0.6b": "Qwen/Qwen3-Embedding-0.6B",
    "conan-embedding-v1": "TencentBAC/Conan-embedding-v1",
    "xiaobu-embedding-v2": "lier007/xiaobu-embedding-v2",
})

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def quiet_libraries() -> None:
    """Silence transformers' per-load progress bars and info logs; ragr shows its own progress."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def resolve_model_path(name_or_path: str, key: str = "model.name_or_path") -> str:
    """Return a local directory holding the model ``name_or_path``.

    Local directories are used as they are; aliases and hub ids are fetched (or found in the cache)
    with ``huggingface_hub.snapshot_download``. When that fails (no network, unknown id), raise a
    UserError saying how to pass a local copy through ``key``.
    """
    quiet_libraries()
    if name_or_path == "minilm":  # the bundled copy beats a download
        from ragr.config.resolvers import bundled

        return bundled("minilm")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise UserError(f"{key}={name_or_path} is a file; it must be a model directory or a hub id")
    repo = ALIASES.get(name_or_path, name_or_path)
    if not _HUB_ID.match(repo) or name_or_path.startswith((".", "/", "~")):
        raise UserError(f"{key}={name_or_path}: no such model directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=repo)
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes the same advice
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"model '{name_or_path}' is not a local directory and could not be fetched from the Hugging Face Hub "
            f"as '{repo}' ({reason}). Without network access, download it on another machine "
            f"(huggingface-cli download {repo} --local-dir DIR), copy DIR here and pass {key}=DIR"
        ) from None
