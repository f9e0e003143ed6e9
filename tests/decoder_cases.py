"""Tiny random-weight decoder-only models built with `transformers` (PyTorch, the reference), shared by the
decoder parity, generation and sharding tests. Each case is one unusual configuration worth proving."""
import numpy as np

VOCAB = 128
EOS = 2
# Every case: hidden 48-64, 2-4 layers. Comments say what each one exercises.
CASES = {
    # Llama 3.2 style RoPE scaling (llama3, factor 32) with original_max_position_embeddings 16 < the 40-token
    # batch; GQA 3:1; head_dim 12 != hidden / heads; untied head; attention and MLP biases.
    "llama3_scaled": dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, head_dim=12, tie_word_embeddings=False,
                          attention_bias=True, mlp_bias=True, rope_theta=500000.0, max_position_embeddings=128,
                          rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    # Llama 2 style: tied embeddings, plain RoPE, no GQA.
    "llama_tied": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=10000.0),
    # Qwen2.5: q/k/v biases, θ 1e6, tied, and a sliding window (8 < 40) on the layers from max_window_layers on.
    "qwen2_sliding": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          rope_theta=1000000.0, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    # Gemma 1: (1 + w) norms, sqrt(hidden) embedding scale, GeLU-tanh, multi-query attention, head_dim 32.
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh",
                  rope_theta=10000.0),
    # Gemma 2: soft-caps small enough to bite, query_pre_attn_scalar, sliding window 6 on alternate layers,
    # sandwich norms.
    "gemma2_capped": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                          attn_logit_softcapping=4.0, final_logit_softcapping=6.0, sliding_window=6,
                          rope_theta=10000.0),
    # Gemma 3: q/k norms, local RoPE base 1e4 on sliding layers, global 1e6 with linear scaling 8, no soft-caps.
    "gemma3": dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                   rope_scaling={"rope_type": "linear", "factor": 8.0},
                   layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
}
# One per family for the (slower) generation and sharding tests.
FAMILY_CASES = ("llama3_scaled", "qwen2_sliding", "gemma2_capped", "gemma3")


def hf_model(name: str, seed: int = 0):
    """A transformers causal LM with random weights that make the tests sensitive: fan-in-scaled matrices
    (peaked next-token distributions), norm weights and biases away from their 1/0 init."""
    import torch
    import transformers

    kwargs = dict(CASES[name])
    model_type = kwargs.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=1, eos_token_id=EOS,
                                               pad_token_id=0, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 1.0 if "embed" in pname else p.shape[1] ** -0.5)
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model


def ending_token(model, tokens, valid, max_new_tokens: int) -> int:
    """A token the model's greedy continuations emit mid-way in several rows, used as EOS so that generations
    end at varied lengths (random models never pick the configured EOS on their own)."""
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                             attention_mask=torch.tensor(valid, dtype=torch.long), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=VOCAB + 1, pad_token_id=0).numpy()[:, tokens.shape[1]:]
    rows = {}
    for row in out:
        for t in set(row[1:max_new_tokens - 2].tolist()):
            rows[t] = rows.get(t, 0) + 1
    return max(sorted(rows), key=lambda t: rows[t])


def prompts(seed: int = 0, lengths=(1, 3, 6, 9, 13, 17)):
    """Six prompts of different lengths; token 0 appears inside them (a real token, as in Llama 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        p = rng.integers(3, VOCAB, n).tolist()
        if n > 2:
            p[1] = 0
        out.append(p)
    return out


def padded_batch(seed: int = 0, batch: int = 4, length: int = 40):
    """Left-padded rows of varied lengths (up to `length`) with their attention mask."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((batch, length), np.int32)
    valid = np.zeros((batch, length), np.bool_)
    for i, n in enumerate([length, length - 7, 23, 11][:batch]):
        tokens[i, length - n:] = rng.integers(0, VOCAB, n)
        valid[i, length - n:] = True
    return tokens, valid
