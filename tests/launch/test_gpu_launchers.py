"""On CUDA machines: every launcher trains like one plain process and saves a model sentence-transformers loads.

Skipped without CUDA (the CPU suite checks these launchers' configs with accelerate's own classes). With two
or more GPUs the ranks split each global batch and gather negatives, as in the CPU ddp test.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

RANKS = min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 1


@pytest.fixture(scope="module")
def common(tiny_bert_nodropout, data_dir):
    return [f"model.name_or_path={tiny_bert_nodropout}", f"data.train={data_dir / 'train.jsonl'}",
            f"data.eval={data_dir / 'dev.jsonl'}", "trainer.max_steps=4", "trainer.grad_accum=2", "trainer.lr=1e-3",
            "trainer.precision=fp32", "trainer.save_every=2", "model.max_doc_length=32", "loss.gather_across_ranks=true"]


@pytest.fixture(scope="module")
def one_process(common, tmp_path_factory, ragr_train, weights):
    run = tmp_path_factory.mktemp("local") / "run"
    ragr_train(*common, "trainer.batch_size=4", f"output_dir={run}")
    return weights(run)


@pytest.mark.parametrize("launcher", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_launcher_matches_one_process_and_saves_a_loadable_model(launcher, common, one_process, tmp_path, ragr_train,
                                                                  weights, assert_same_weights):
    if launcher.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed")
    run = tmp_path / launcher
    ragr_train(*common, f"launcher={launcher}", f"launcher.num_processes={RANKS}",
               f"trainer.batch_size={4 // RANKS}", f"output_dir={run}")
    assert_same_weights(weights(run), one_process, atol=1e-4)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run / "model"), device="cpu").encode(["a query"]).shape == (1, 32)
    assert (run / "eval.json").is_file()
