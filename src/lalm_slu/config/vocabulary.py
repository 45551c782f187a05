"""The workflow's closed word lists, one definition each. Plain Python: the Snakefile imports it.

The config schema's enums repeat these lists (a schema cannot import Python); a test holds them equal.
"""

from __future__ import annotations

# How a training item presents an utterance: its transcript, its speech, or the transcript with a span of words
# spoken instead of written (a mixture's `modality` column).
ITEM_MODALITIES = ("text", "speech", "interleaved")

# What a test set is decoded from: its speech end to end, its gold transcript, or the base model's transcript of
# its speech (the cascade); in this order in tables (config decode.modalities, a score's `modality`).
TEST_INPUTS = ("speech", "text", "cascade")
