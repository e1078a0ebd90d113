"""Teacher vectors for Stella/Jasper stage 3: row ``i`` of a float32 ``(N, dim)`` .npy belongs to text line ``i``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ragr.errors import UserError


def sidecar(vectors_path: str) -> dict[str, Any]:
    side = Path(str(vectors_path)).with_suffix(".json")
    try:
        return {"written_by": json.loads(side.read_text())} if side.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def open_vectors(path: str, rows: int, texts_path: str) -> np.ndarray:
    """Memory-map a float32 ``(N, dim)`` .npy of teacher vectors and check it has one row per text."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"teacher.name_or_path={path}: no such vectors file (write one with `ragr embed`)")
    try:
        vectors = np.load(p, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"teacher.name_or_path={path} is not a .npy array ({exc})") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise UserError(f"teacher.name_or_path={path}: expected a float (N, dim) array, got {vectors.dtype} {vectors.shape}")
    if vectors.shape[0] != rows:
        raise UserError(f"teacher.name_or_path={path} has {vectors.shape[0]} rows but {texts_path} has {rows} texts; "
                        "row i of the vectors must belong to line i of the texts")
    return vectors


class VectorDataset:
    """Item ``i``: the text of line ``i`` (its ``prompt`` prepended) and row ``i`` of the teacher vectors."""

    def __init__(self, index, vectors: np.ndarray) -> None:
        self.index, self.vectors = index, vectors

    @staticmethod
    def text_of(rec: dict[str, Any]) -> str:
        return (rec.get("prompt") or rec.get("prompt_for_query") or "") + (rec["text"] if "text" in rec else rec["query"])

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self.text_of(self.index[i]), "vector": np.asarray(self.vectors[i], dtype=np.float32)}
