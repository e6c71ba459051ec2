"""The GPT's weights packed once, at load, for oneDNN's linear kernel on CPU.

XTTS's GPT layers are HF `Conv1D`, i.e. `torch.addmm`. On CPU, a product with two or more rows goes
through a GEMM that packs the weight matrix into its blocked layout on every call, so a batched decode
step cost about 3x a single stream's although both read the same weights (docs/benchmarks.md,
"Kernels"). oneDNN's linear on a weight packed once (`torch.ops.mkldnn._reorder_linear_weight`, then
`_linear_pointwise`) skips that. Its arithmetic for a row also does not depend on how many rows there
are, which the stock kernel's does; the engine relies on that for seeded output that does not depend on
the crowd (model/decoding.py). torch.compile with freezing was measured too and was slower, with a
compile time per batch shape that load() cannot afford (docs/benchmarks.md, "Kernels").

The packed weights replace the stock ones: each stock tensor is dropped, and its pages in the
memory-mapped model.pth are given back (madvise), so resident memory does not hold both. Upstream
XTTS code that calls these layers (the upstream streamer) runs on the packed ones too.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import nn
from TTS.tts.layers.xtts.gpt import GPT

from model.slots import release_pages

logger = logging.getLogger(__name__)

# The batch size oneDNN is told to pack for: the engine's usual rows per step (up to 8 streams, plus
# prompt pieces). Any row count works on the packed weight.
PACKED_FOR_ROWS = 8


class PackedLinear(nn.Module):
    """y = x W^T + b on a oneDNN-packed W, for inputs of any leading shape."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        """`weight`: [out, in], nn.Linear's layout."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKED_FOR_ROWS)
        self.bias = None if bias is None else bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def can_pack(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Packing is for CPU in float32; CUDA keeps the stock kernels (cuBLAS packs nothing per call).
    Half precision on CPU runs the stock kernels: it is there to test the GPU's dtypes, not to serve."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


def pack_gpt(gpt: GPT, mapped: bool) -> int:
    """Replace the GPT's linear layers (every block's attention and MLP products, and the mel head) with
    packed ones, in place. `mapped`: the stock weights are pages of a memory-mapped file, to be given
    back. Returns the bytes of stock weights released. Idempotent."""
    released = 0
    for block in gpt.gpt.h:
        for owner, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            released += _replace(owner, name, mapped, transposed=True)  # Conv1D keeps its weight as [in, out]
    released += _replace(gpt, "mel_head", mapped, transposed=False)
    # HF's generate path (the upstream streamer) holds the mel head in a head of its own.
    inference = getattr(gpt, "gpt_inference", None)
    if inference is not None:
        inference.lm_head[1] = gpt.mel_head
    _trim_heap()
    logger.info("GPT linear layers packed for oneDNN; %.0f MB of stock weights released", released / 2**20)
    return released


def _replace(owner: nn.Module, name: str, mapped: bool, transposed: bool) -> int:
    layer = getattr(owner, name)
    if isinstance(layer, PackedLinear):
        return 0
    weight = layer.weight
    setattr(owner, name, PackedLinear(weight.t() if transposed else weight, layer.bias))
    if mapped:
        _give_back(weight)
    return weight.numel() * weight.element_size()


def _give_back(tensor: torch.Tensor) -> None:
    """Return the pages of a memory-mapped tensor that nothing reads any more. They stay resident after
    the tensor is gone, since the mapping lives as long as any tensor of the file does; MADV_DONTNEED
    drops them (a later read would fetch them from the file again)."""
    if kept := release_pages(tensor):
        logger.warning("madvise failed: %d bytes stay resident", kept)


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS. Packing a Conv1D weight makes a transposed copy that
    is freed at once, but glibc keeps such freed blocks in its heap: measured on the real-size
    checkpoint, resident memory after packing was 2.9 GB without this and 2.4 GB with it, the same as
    the stock weights (docs/benchmarks.md, "Kernels"). Not glibc (musl): nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:
        pass
