"""ragr keeps SDPA off cuDNN's per-shape-graph backend on CUDA (ragr.models.attention)."""

import torch

from ragr.models.attention import shape_stable_attention


def test_on_cuda_every_backend_but_cudnn_stays_enabled():
    b = torch.backends.cuda
    before = (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled())
    with shape_stable_attention(torch.device("cuda", 0)):  # only sets backend flags: runs without a GPU
        assert not b.cudnn_sdp_enabled()
        assert b.flash_sdp_enabled() and b.mem_efficient_sdp_enabled() and b.math_sdp_enabled()
    assert (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()) == before


def test_off_cuda_nothing_changes():
    b = torch.backends.cuda
    before = b.cudnn_sdp_enabled()
    with shape_stable_attention("cpu"):
        assert b.cudnn_sdp_enabled() == before
