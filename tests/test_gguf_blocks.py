"""Q4_0 / Q4_1 block codecs against gguf-py's own quantize/dequantize: bit-identical blocks, exact dequantization."""

import gguf
import numpy as np
import pytest
import torch

from quantkit.formats import gguf_blocks as B
from quantkit.qlinear import QuantizedLinear

Q4_0, Q4_1 = gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1


def _layer(n, k, group, *, sym, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = k // group
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales = (torch.rand(groups, n, generator=g) * 0.02 + 1e-3).to(dtype)
    zeros = torch.full((groups, n), 8, dtype=torch.uint8) if sym else torch.randint(0, 16, (groups, n), generator=g, dtype=torch.uint8)
    return QuantizedLinear(codes=codes, scales=scales, zeros=zeros, g_idx=torch.arange(k, dtype=torch.int32) // group,
                           bits=4, group_size=group, sym=sym)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_q4_0_dequantizes_exactly_through_gguf(group, dtype):
    ql = _layer(24, 256, group, sym=True, dtype=dtype)
    data = B.encode_q4_0(ql.codes, ql.scales, group_size=group)
    assert data.shape == (24, 256 // 32 * 18) and data.dtype == np.uint8
    ours = gguf.quants.dequantize(data, Q4_0)  # llama.cpp's reference dequantization, in numpy
    # fp16 and bf16 scales of this range are fp16 values, so the result is bit-identical to the reference
    np.testing.assert_array_equal(ours, ql.dequantize(torch.float32).numpy())


@pytest.mark.parametrize("group", [32, 128])
def test_q4_1_dequantizes_through_gguf_up_to_fp16_rounding_of_m(group):
    ql = _layer(16, 256, group, sym=False)
    data = B.encode_q4_1(ql.codes, ql.scales, ql.zeros, group_size=group)
    ours = gguf.quants.dequantize(data, Q4_1)
    ref = ql.dequantize(torch.float32).numpy()
    # d is the fp16 scale exactly; m = -scale*zero is rounded to fp16: at most half an fp16 ulp of |m|
    m = (ql.scales.double() * ql.zeros.double()).numpy()
    bound = np.repeat(m.T, group, axis=1) * 2.0**-11 + 1e-7
    assert np.all(np.abs(ours - ref) <= bound)
    codes, d, mm = B.decode_q4_1(data)
    np.testing.assert_array_equal(codes, ql.codes.numpy())
    np.testing.assert_array_equal(B.group_params(d, group_size=group), ql.scales.numpy())
    # exactly d*q + m with the stored fp16 d, m
    exact = np.repeat(d.astype(np.float32), 32, 1) * codes + np.repeat(mm.astype(np.float32), 32, 1)
    np.testing.assert_array_equal(ours, exact)


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1])
def test_blocks_of_gguf_quantizer_round_trip_bit_identical(qtype):
    w = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    ref = gguf.quants.quantize(w, qtype)  # gguf-py's port of llama.cpp's reference quantizer
    again = B.pack_q4_0(*B.decode_q4_0(ref)) if qtype == Q4_0 else B.pack_q4_1(*B.decode_q4_1(ref))
    np.testing.assert_array_equal(again, ref)


def test_encode_q4_0_of_gguf_codes_and_scales_is_bit_identical():
    w = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    ref = gguf.quants.quantize(w, Q4_0)
    codes, d = B.decode_q4_0(ref)
    np.testing.assert_array_equal(B.encode_q4_0(torch.from_numpy(codes), torch.from_numpy(d.T.copy()), group_size=32), ref)


def test_q4_1_encoder_matches_gguf_byte_layout():
    ql = _layer(4, 64, 32, sym=False)
    data = B.encode_q4_1(ql.codes, ql.scales, ql.zeros, group_size=32)
    codes, d, m = B.decode_q4_1(data)
    rebuilt = np.concatenate(
        [d.astype("<f2").reshape(4, 2, 1).view(np.uint8), m.astype("<f2").reshape(4, 2, 1).view(np.uint8),
         (codes.reshape(4, 2, 32)[..., :16] | codes.reshape(4, 2, 32)[..., 16:] << 4).astype(np.uint8)], axis=-1)
    np.testing.assert_array_equal(rebuilt.reshape(4, -1), data)


def test_fp32_scales_round_to_fp16_and_report_the_error():
    s = torch.tensor([[0.1, 0.3]], dtype=torch.float32)
    h, rel = B.to_fp16(s)
    assert h.dtype == np.float16 and 0 < rel <= 2.0**-11


def test_bf16_scales_in_fp16_range_are_exact():
    s = (torch.rand(64, 64) * 0.05 + 1e-3).to(torch.bfloat16)
    _, rel = B.to_fp16(s)
    assert rel == 0.0


@pytest.mark.parametrize("bad", [1e6, 1e-7])
def test_scales_fp16_cannot_hold_raise(bad):
    with pytest.raises(ValueError, match="does not fit fp16"):
        B.to_fp16(torch.tensor([[bad]], dtype=torch.bfloat16))


def test_group_not_multiple_of_32_raises():
    ql = _layer(8, 48, 16, sym=True)
    with pytest.raises(ValueError, match="multiple of 32"):
        B.encode_q4_0(ql.codes, ql.scales, group_size=16)
