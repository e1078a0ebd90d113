"""Inference: one Reranker interface over every family (see DESIGN.md section 8)."""
