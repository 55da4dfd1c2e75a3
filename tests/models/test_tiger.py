"""Our TIGER against transformers' T5ForConditionalGeneration on the same weights."""

from __future__ import annotations

import torch

from genrec.models.tiger import Tiger, TigerConfig, to_hf


def small_model(seed: int = 0) -> Tiger:
    torch.manual_seed(seed)
    return Tiger(TigerConfig(vocab_size=300, num_encoder_layers=2, num_decoder_layers=2, d_ff=256)).eval()


def random_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (4, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0          # right padding
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    dec = torch.randint(2, 300, (4, 4), generator=g)
    dec[:, 0] = 0            # decoder start = pad
    return ids, mask, dec


def test_same_logits_as_t5_for_conditional_generation():
    model = small_model()
    hf = to_hf(model)
    for seed in range(3):
        ids, mask, dec = random_batch(seed)
        with torch.no_grad():
            ours = model(ids, mask, dec)
            theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_default_tiger_size_matches_too():
    torch.manual_seed(0)
    model = Tiger(TigerConfig(vocab_size=1100)).eval()   # TIGER: 4+4 layers, 128, 6 x 64, 1024
    ids, mask, dec = random_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, dec), to_hf(model)(input_ids=ids, attention_mask=mask,
                                                                        decoder_input_ids=dec).logits,
                                   atol=1e-4, rtol=0)


def test_incremental_decoding_matches_teacher_forcing():
    model = small_model()
    ids, mask, _ = random_batch()
    beams = 5
    dec = torch.randint(2, 300, (4, beams, 4), generator=torch.Generator().manual_seed(7))
    dec[:, :, 0] = 0
    with torch.no_grad():
        encoded = model.encode(ids, mask)
        full = model.decode(dec.flatten(0, 1), encoded.repeat_interleave(beams, 0),
                            mask.repeat_interleave(beams, 0)).view(4, beams, 4, -1)
        # one copy of the encoder state per request, shared by its beams
        cross = model.cross_kv(encoded)
        cross_bias = model._key_mask(mask)
        cache = [[] for _ in model.decoder_layers]
        for t in range(4):
            step = model.decode_step(dec[:, :, t], t, cross, cross_bias, cache)
            torch.testing.assert_close(step, full[:, :, t], atol=1e-4, rtol=0)
        assert cache[0][0].shape == (4, beams, 6, 4, 64)  # only the decoder's few tokens per beam
