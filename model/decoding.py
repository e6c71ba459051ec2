"""Batched GPT decoding for XTTS: one forward advances every stream that is generating by one token, and
carries on the prompts of streams that are joining, a piece at a time (chunked prefill).

Stock XTTS cannot batch requests: `GPT2InferenceModel.store_prefix_emb` keeps one prompt on the shared
module, and its decode step derives one mel position for the whole batch. So this module runs the GPT
itself, over the loaded weights: XTTS's GPT is HF's `GPT2Model` with its built-in position embedding
nulled and XTTS's learned text and mel position embeddings added to the inputs. Every per-stream state
(prompt progress, KV cache, mel position, sampling settings, generator) lives in the slot table
(model/slots.py); nothing per stream is stored on the model.

A forward is one set of rows through every layer: the token of each generating stream, then the
prompt pieces. The layers' linear maps see all rows at once, so the weights are read once per step
whatever the batch; attention runs per stream, over that stream's own cache and nothing else. With the
linear kernels packed on CPU (model/packing.py), whose arithmetic for a row does not depend on the
other rows, a stream's numbers are then the same bit for bit whatever else runs, and so are its tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from TTS.tts.layers.xtts.gpt import GPT

from model.slots import SlotTable


@dataclass(frozen=True)
class Piece:
    """Rows of one stream's prompt, [k, C], for positions lengths[slot] .. lengths[slot] + k - 1."""

    slot: int
    rows: torch.Tensor


class Decoder:
    """XTTS's GPT over a slot table."""

    def __init__(self, gpt: GPT, table: SlotTable):
        self.gpt = gpt
        self.blocks = gpt.gpt.h
        self.table = table
        self.width = gpt.model_dim
        self.heads = gpt.heads
        self.head_dim = self.width // self.heads

    @classmethod
    def for_model(cls, gpt: GPT, slots: int) -> Decoder:
        param = gpt.mel_head.bias
        table = SlotTable(
            slots, len(gpt.gpt.h), gpt.heads, gpt.model_dim // gpt.heads, gpt.mel_head.out_features, param.device,
            param.dtype,
        )
        return cls(gpt, table)

    def prompt(self, cond_latent: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """A sentence's prompt [P, C]: the conditioning latent, the text between its start and stop
        tokens (`GPT.compute_embeddings`, without storing it on the model), then the start-of-audio
        token at mel position 0, whose output gives the first latent and logits."""
        text = F.pad(text_tokens, (0, 1), value=self.gpt.stop_text_token)
        text = F.pad(text, (1, 0), value=self.gpt.start_text_token)
        emb = self.gpt.text_embedding(text) + self.gpt.text_pos_embedding(text)
        device = emb.device
        start = self.mel_input(
            torch.tensor([self.gpt.start_audio_token], device=device), torch.zeros(1, dtype=torch.long, device=device)
        )
        return torch.cat([cond_latent.to(device, emb.dtype)[0], emb[0], start])

    def mel_input(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rows [n, C] for mel tokens at their mel positions."""
        return self.gpt.mel_embedding(tokens) + self.gpt.mel_pos_embedding.emb(positions)

    def forward(self, slots: list[int], tokens: list[int], positions: list[int], pieces: list[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed `tokens[i]` at mel position `positions[i]` to stream `slots[i]`, and each piece to its
        stream. Returns the latents [m, C] and logits [m, vocab] of each token's row, then of each
        piece's last row (m = len(tokens) + len(pieces))."""
        table, device = self.table, self.table.device
        n = len(tokens)
        rows = [self.mel_input(torch.tensor(tokens, device=device), torch.tensor(positions, device=device))] if n else []
        x = torch.cat(rows + [p.rows for p in pieces])
        owners = slots + [p.slot for p in pieces]
        sizes = [1] * n + [len(p.rows) for p in pieces]
        starts, filled = [], {}
        for slot, size in zip(owners, sizes, strict=True):  # a stream's pieces follow one another
            starts.append(filled.get(slot, table.lengths[slot]))
            filled[slot] = starts[-1] + size
        table.reserve(max(filled.values()))
        at_slots = torch.tensor(slots, dtype=torch.long, device=device)
        at = torch.tensor(starts[:n], dtype=torch.long, device=device)
        masks = [None if size == 1 else self._causal(start, size) for start, size in zip(starts, sizes, strict=True)]
        attended = torch.empty(len(x), self.heads, self.head_dim, device=device, dtype=x.dtype)
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.c_attn(block.ln_1(x)).view(len(x), 3, self.heads, self.head_dim).unbind(1)
            keys, values = table.k[layer], table.v[layer]
            keys[at_slots, :, at], values[at_slots, :, at] = k[:n], v[:n]  # every generating row's position at once
            row = n
            for piece, start in zip(pieces, starts[n:], strict=True):
                size = len(piece.rows)
                keys[piece.slot, :, start : start + size] = k[row : row + size].transpose(0, 1)
                values[piece.slot, :, start : start + size] = v[row : row + size].transpose(0, 1)
                row += size
            row = 0
            for slot, start, size, mask in zip(owners, starts, sizes, masks, strict=True):
                end = start + size
                # One stream's rows over its own cache: the same call, alone or in a crowd.
                out = F.scaled_dot_product_attention(
                    q[row : row + size].transpose(0, 1)[None], keys[slot, :, :end][None], values[slot, :, :end][None],
                    attn_mask=mask,
                )
                attended[row : row + size] = out[0].transpose(0, 1)
                row += size
            x = x + block.attn.c_proj(attended.view(len(x), self.width))
            x = x + block.mlp(block.ln_2(x))
        for slot, length in filled.items():
            table.lengths[slot] = length
        last = torch.tensor([sum(sizes[: i + 1]) - 1 for i in range(len(sizes))], device=device)
        latents = self.gpt.final_norm(self.gpt.gpt.ln_f(x[last]))
        return latents, self.gpt.mel_head(latents)

    def _causal(self, start: int, size: int) -> torch.Tensor:
        """Rows at positions start..start+size-1, each seeing every position up to its own."""
        device = self.table.device
        return torch.arange(start + size, device=device)[None, :] <= torch.arange(start, start + size, device=device)[:, None]


def sample(logits: torch.Tensor, table: SlotTable, slots: list[int]) -> list[int]:
    """One token per row of `logits` [n, vocab], row i with the settings, seen tokens and generator of
    slot `slots[i]`; each sampled token joins its slot's seen tokens.

    The order and arithmetic are HF's for `do_sample=True`: RepetitionPenaltyLogitsProcessor (over the
    slot's seen tokens, the stream's input ids), then the Temperature, TopK and TopP warpers, then
    softmax and `torch.multinomial`. With the same generator state a row gives HF's token, and every
    operation is per row, so a row's token does not depend on the others.
    """
    index = torch.tensor(slots, device=logits.device)
    scores = logits.float()
    seen = table.seen[index]
    penalty = table.repetition_penalty[index, None]
    scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    scores = scores / table.temperature[index, None]

    top_k = table.top_k[index].clamp(max=scores.shape[-1])
    kth = torch.topk(scores, int(top_k.max())).values.gather(1, top_k[:, None] - 1)
    scores = scores.masked_fill(scores < kth, -float("inf"))

    top_p = table.top_p[index, None]
    if bool((top_p < 1.0).any()):  # HF leaves the warper out at 1.0
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = (cumulative <= 1 - top_p) & (top_p < 1.0)
        remove[:, -1] = False  # min_tokens_to_keep
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))

    probs = F.softmax(scores, dim=-1)
    tokens = [int(torch.multinomial(probs[i : i + 1], 1, generator=table.generators[s])) for i, s in enumerate(slots)]
    table.seen[index, torch.tensor(tokens, device=logits.device)] = True
    return tokens
