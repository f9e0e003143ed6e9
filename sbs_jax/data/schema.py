"""The batch schema: the one place the names of streams, batch keys and task prefixes are declared.

Every producer (preprocessors, feature converter, packing, pipeline, serving) and every consumer (objective,
step, inputs, batch cutting, evaluation, report) imports these names from here, so a change of the schema is a
change of this file and of the code that reads it, never a second spelling somewhere else. Pure Python: no
TF, no JAX, importable from any layer. ARCHITECTURE.md ("Batch schema") draws the batches.
"""
from __future__ import annotations

import dataclasses
from typing import Any

# ------------------------------------------------------------------------------------------- streams
LABEL = "label"            # the stream that predicts the label: inputs start with PREDICT_PREFIX
RATIONALE = "rationale"    # the stream that explains: inputs start with EXPLAIN_PREFIX
STREAMS = (LABEL, RATIONALE)
PACKED = "packed"          # the only key of a packed batch (sbs_jax.data.input_pipeline.packing)

# Task prefixes of the two streams (the paper's multi-task prompts).
PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "
PREFIXES = {LABEL: PREDICT_PREFIX, RATIONALE: EXPLAIN_PREFIX}

# decoder_stream_ids of a packed batch: which stream a target token belongs to (0 = padding).
LABEL_STREAM_ID, RATIONALE_STREAM_ID = 1, 2
STREAM_IDS = {LABEL: LABEL_STREAM_ID, RATIONALE: RATIONALE_STREAM_ID}

# stream name -> (task feature of its encoder inputs, task feature of its targets)
STREAM_FEATURES = {LABEL: ("inputs", "targets"), RATIONALE: ("rationale_inputs", "rationales")}

# ---------------------------------------------------------------------------------------- batch keys
ENCODER_INPUT_TOKENS = "encoder_input_tokens"
DECODER_INPUT_TOKENS = "decoder_input_tokens"
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"
ENCODER_SEGMENT_IDS, ENCODER_POSITIONS = "encoder_segment_ids", "encoder_positions"
DECODER_SEGMENT_IDS, DECODER_POSITIONS = "decoder_segment_ids", "decoder_positions"
DECODER_STREAM_IDS = "decoder_stream_ids"

# The features of one stream of an unpacked batch, [B, length] each.
STREAM_KEYS = (ENCODER_INPUT_TOKENS, DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, DECODER_LOSS_WEIGHTS)
# Encoder-side features of either batch form (packed rows add segment ids and positions).
ENCODER_KEYS = (ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS, ENCODER_POSITIONS)
# Features the loss reads and the model does not take.
LOSS_ONLY_KEYS = (DECODER_LOSS_WEIGHTS, DECODER_STREAM_IDS)

# ------------------------------------------------------------------------ decoder-only (causal LM) rows
# A causal row is one token sequence [BOS] prompt completion EOS, fed shifted: `decoder_tokens` are the
# sequence without its last token, `decoder_target_tokens` without its first (the next token at each slot).
# Loss weights are 0 on prompt targets, 1 on completion and EOS targets; `decoder_stream_ids` say which stream
# (label 1, rationale 2) a weighted target belongs to; `decoder_valid` is the attention mask (1 on real
# tokens: token ids never say what is padding, id 0 is a real token in Llama 3).
DECODER_TOKENS = "decoder_tokens"
DECODER_VALID = "decoder_valid"
CAUSAL_KEYS = (DECODER_TOKENS, DECODER_TARGET_TOKENS, DECODER_LOSS_WEIGHTS, DECODER_POSITIONS, DECODER_VALID,
               DECODER_STREAM_IDS)
# Causal formats (`sbs_jax.data.input_pipeline.causal_lm`): the paper's two streams, or one sequence per
# example with the rationale before (chain of thought) or after ("post-thinking") the label, or the two streams
# as one tree-shaped row whose prompt (the input, each stream's prefix after it) is computed once.
MULTITASK, RATIONALE_FIRST, LABEL_FIRST = "multitask", "rationale_first", "label_first"
MULTITASK_SHARED_PROMPT = "multitask_shared_prompt"
CAUSAL_FORMATS = (MULTITASK, RATIONALE_FIRST, LABEL_FIRST, MULTITASK_SHARED_PROMPT)
# Tree-shaped rows (MULTITASK_SHARED_PROMPT): per token, 0 on the shared prompt (visible to every token after
# it) and the stream id of the completion branch it belongs to (visible only to its own branch).
DECODER_BRANCH_IDS = "decoder_branch_ids"
# The one-sequence formats' batch key, and the text between a completion's two parts (the label is parsed
# from a generation by it).
SEQUENCE = "sequence"
FORMAT_MARKERS = {RATIONALE_FIRST: " So the answer is ", LABEL_FIRST: " Explanation: "}


# ---------------------------------------------------------------------------------- evaluation rows
@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """The examples a split is decoded and scored on, as arrays (`pipeline.get_eval_examples`, `sbs infer`).

    encoder_input_tokens: [N, Li] int32 label-stream inputs (PREDICT_PREFIX + input, EOS-ended, 0-padded);
    inputs, targets, rationales: [N] str (object arrays) of the raw input, the gold label and the teacher
    rationale ("" when unknown).
    """
    encoder_input_tokens: Any
    inputs: Any
    targets: Any
    rationales: Any

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int | None) -> "EvalExamples":
        """The first `n` examples (all with None)."""
        if n is None:
            return self
        return EvalExamples(*(getattr(self, f.name)[:n] for f in dataclasses.fields(self)))
