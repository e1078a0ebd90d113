"""ragr: fine-tune, distill, evaluate and serve the retrieval models behind RAG."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import ragr` stays light; `from ragr import Reranker` pulls in torch only when asked.
    if name == "Reranker":
        from ragr.infer.reranker import Reranker

        return Reranker
    raise AttributeError(f"module 'ragr' has no attribute {name!r}")
