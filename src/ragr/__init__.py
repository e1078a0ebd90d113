"""ragr: fine-tune, distill, evaluate and serve the retrieval models behind RAG."""

__version__ = "0.1.0"
