"""Attention backend switch: SDPA everywhere, and the varlen packing used by flash_attn/xformers."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from salt_fast.models.vit import _varlen, attention, build_encoder


def per_segment_attention(packed, cu_seqlens, max_len):
    """What flash_attn_varlen_qkvpacked_func computes, written as one SDPA call per segment."""
    assert max_len == int(cu_seqlens.diff().max())
    out = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        q, k, v = packed[start:end].unbind(1)  # [L, H, hd]
        out.append(F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1))
    return torch.cat(out)


def test_varlen_packing_matches_masked_sdpa():
    qkv = torch.randn(3, 11, 3, 2, 16)
    valid = torch.rand(3, 11) > 0.4
    valid[:, 0] = True  # every row keeps at least one token
    masked = attention(qkv, valid)
    packed = _varlen(qkv, valid, per_segment_attention)
    torch.testing.assert_close(packed[valid], masked[valid], atol=1e-5, rtol=1e-5)
    assert torch.all(packed[~valid] == 0)


def test_sdpa_without_padding_is_plain_attention():
    qkv = torch.randn(2, 9, 3, 4, 8)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    torch.testing.assert_close(attention(qkv), (weights @ v).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_backend_is_validated_and_missing_ones_say_so():
    with pytest.raises(ValueError, match="attn_backend"):
        build_encoder("vit_tiny", depth=1, attn_backend="triton")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(torch.randn(1, 2, 3, 1, 8), backend="nope")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ImportError, match="flash_attn"):
            attention(torch.randn(1, 2, 3, 1, 8), backend="flash_attn")
