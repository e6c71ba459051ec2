"""The GPT's packed linear layers (model/packing.py): the same products, and they replace the stock
weights in memory rather than sit beside them."""

import subprocess
import sys
from pathlib import Path

import torch

from model.packing import PackedLinear

ROOT = Path(__file__).resolve().parents[1]


def test_a_packed_linear_computes_the_stock_product_for_any_row_count():
    weight, bias = torch.randn(48, 32), torch.randn(48)
    packed = PackedLinear(weight, bias)
    for rows in (1, 2, 7, 33):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(packed(x), torch.nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert packed(torch.randn(2, 3, 32)).shape == (2, 3, 48)


# A process of its own, so the figures are this load's alone. The tiny checkpoint's GPT is too small
# to measure (under 1 MB of linear weights), so this is a GPT-2 stack of XTTS's layout (HF Conv1D
# blocks and a mel head) with 50 MB of weights, memory-mapped from a torch file as load_xtts maps
# model.pth, and touched first, as a first forward would, so the stock weights are resident.
MEASURE = """
import sys, torch
from torch import nn
from transformers import GPT2Config, GPT2Model
from model.packing import pack_gpt

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

gpt = nn.Module()
gpt.gpt = GPT2Model(GPT2Config(n_embd=512, n_layer=4, n_head=8, vocab_size=8, n_positions=8))
gpt.mel_head = nn.Linear(512, 1026)
torch.save(gpt.state_dict(), sys.argv[1])
gpt.load_state_dict(torch.load(sys.argv[1], mmap=True, weights_only=True), assign=True)
with torch.inference_mode():
    sum(float(p.sum()) for p in gpt.parameters())
before = rss_kb()
released = pack_gpt(gpt, mapped=True)
print(before, rss_kb(), released // 1024)
"""


def test_packing_does_not_keep_the_stock_weights_resident(tmp_path):
    """Without giving back the mapped pages (madvise) or the freed transposed copies (malloc_trim),
    resident memory grows by about the packed weights' size; with both it stays where it was."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "gpt.pth")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    before, after, packed = (int(v) for v in out.split()[-3:])
    assert packed > 40_000
    assert after - before < packed / 4, f"resident memory grew {after - before} kB for {packed} kB of packed weights"
