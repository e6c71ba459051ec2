"""The reference the engine is tested against: XTTS's own GPT sampling (HF generate through
`GPT.get_generator`), its latents decoded by the windowed vocoder. tests/test_vocoder.py checks it
against upstream `Xtts.inference_stream`; tests/test_engine.py checks the batched engine against it.
Not served: test code only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from TTS.tts.layers.xtts.tokenizer import split_sentence
from TTS.tts.models.xtts import Xtts

from model.vocoder import Windowed


@torch.inference_mode()
def inference_stream(
    model: Xtts,
    text: str | list[str],
    language: str,
    gpt_cond_latent: torch.Tensor,
    speaker_embedding: torch.Tensor,
    stream_chunk_size: int = 20,
    overlap_wav_len: int = 1024,
    temperature: float = 0.75,
    length_penalty: float = 1.0,
    repetition_penalty: float = 10.0,
    top_k: int = 50,
    top_p: float = 0.85,
    do_sample: bool = True,
    speed: float = 1.0,
    enable_text_splitting: bool = False,
    first_chunk_size: int | None = None,
    **hf_generate_kwargs,
) -> Iterator[torch.Tensor]:
    """Yield 1-D float chunks at 24 kHz, the same as `model.inference_stream` would.

    `text` is one text, split as upstream splits it, or a list of pieces spoken one after another.

    `first_chunk_size` tokens make the stream's first chunk (a lower time to first audio); the
    rest come every `stream_chunk_size` tokens. None means `stream_chunk_size`, upstream's chunks.
    """
    language = language.split("-")[0]
    length_scale = 1.0 / max(speed, 0.05)
    gpt_cond_latent = gpt_cond_latent.to(model.device)
    speaker_embedding = speaker_embedding.to(model.device)
    if isinstance(text, str):  # a list is already split (model/text.py): spoken as given
        text = split_sentence(text, language, model.tokenizer.char_limits[language]) if enable_text_splitting else [text]
    chunk_size = stream_chunk_size if first_chunk_size is None else first_chunk_size

    for sent in text:
        sent = sent.strip().lower()
        text_tokens = torch.IntTensor(model.tokenizer.encode(sent, lang=language)).unsqueeze(0).to(model.device)
        assert text_tokens.shape[-1] < model.args.gpt_max_text_tokens, (
            " ❗ XTTS can only generate text with a maximum of 400 tokens."
        )
        fake_inputs = model.gpt.compute_embeddings(gpt_cond_latent, text_tokens)
        gpt_generator = model.gpt.get_generator(
            fake_inputs=fake_inputs,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            do_sample=do_sample,
            num_beams=1,
            num_return_sequences=1,
            length_penalty=float(length_penalty),
            repetition_penalty=float(repetition_penalty),
            output_attentions=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
            **hf_generate_kwargs,
        )

        windowed = Windowed(model, speaker_embedding, length_scale, overlap_wav_len)
        n_new = 0
        is_end = False
        while not is_end:
            try:
                _, latent = next(gpt_generator)
                windowed.add(latent)
                n_new += 1
            except StopIteration:
                is_end = True

            if is_end or (chunk_size > 0 and n_new >= chunk_size):
                # Too few tokens for one frame at this speed (the model stopped early, or a chunk smaller
                # than `speed`): nothing to decode yet, and at the end nothing to say.
                chunk = windowed.chunk(is_end)
                if chunk is not None:
                    yield chunk
                    n_new = 0
                    chunk_size = stream_chunk_size
