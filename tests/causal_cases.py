"""Causal-LM examples and an independent transformers reference for them (shared by the decoder-only objective
and trajectory tests): task features of random lengths, the sequences each format makes written out as token
lists, and HF's own `labels=` loss over one stream's tokens."""
import numpy as np

import decoder_cases as cases

BOS, EOS, SRC_EOS, MARK = 1, cases.EOS, 1, (9, 10)
FEATURE_LENGTHS = {"inputs": 9, "targets": 4, "rationales": 8}


def random_examples(seed, n=4):
    """Task features (vocabulary EOS 1 at the end) of random lengths; one unparsed rationale."""
    rng = np.random.default_rng(seed)

    def feature(low, high):
        return np.concatenate([rng.integers(3, cases.VOCAB, int(rng.integers(low, high + 1))), [SRC_EOS]])

    out = []
    for i in range(n):
        x = feature(2, 6)
        ex = {"inputs": np.concatenate([[11], x]), "rationale_inputs": np.concatenate([[12], x]),
              "targets": feature(1, 3), "rationales": feature(2, 7)}
        if i == 2:
            ex["rationales"] = np.array([SRC_EOS])
        out.append(ex)
    return out


def reference_sequences(ex, fmt, bos):
    """Per stream: (full token list, per-token stream label or None for prompt), written out independently."""
    strip = lambda k: [int(t) for t in ex[k][:-1]]  # noqa: E731
    head = [bos] if bos is not None else []
    if fmt == "multitask":
        rationale = strip("rationales")
        return {"label": [(t, None) for t in head + strip("inputs")]
                + [(t, "label") for t in strip("targets") + [EOS]],
                "rationale": [(t, None) for t in head + strip("rationale_inputs")]
                + [(t, "rationale" if rationale else None) for t in rationale + [EOS]]}
    prompt = [(t, None) for t in head + strip("inputs")]
    if fmt == "rationale_first":
        rest = ([(t, "rationale") for t in strip("rationales")]
                + [(t, "label") for t in list(MARK) + strip("targets") + [EOS]])
    else:
        rest = ([(t, "label") for t in strip("targets") + list(MARK)]
                + [(t, "rationale") for t in strip("rationales") + [EOS]])
    return {"both": prompt + rest}


def hf_stream_loss(hf, sequences, stream):
    """HF's causal-LM loss (`labels=`, shifted inside, -100 ignored) over the tokens of `stream`."""
    import torch

    length = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, seq in enumerate(sequences):
        for j, (t, s) in enumerate(seq):
            ids[i, j], mask[i, j] = t, 1
            if s == stream:
                labels[i, j] = t
    if not (labels[:, 1:] != -100).any():
        return torch.zeros(())
    return hf(input_ids=ids, attention_mask=mask, labels=labels).loss
