"""How decoding groups prompts into batches: longest first, each batch filled up to a token budget, and the budget
sized for the card from the model's shape. Plain Python (no torch), so that planning code can import it.

A batch of n prompts padded to its longest, P tokens, with B beams and up to N new tokens holds n·B·(P + N) tokens
of key/value cache at the end; that product is what the budget bounds. The budget for a card of M GiB:

    weights      every parameter in the compute dtype (c bytes): c·W
    per token    the key/value cache, 2·L·kv_heads·head_dim·c, for every budgeted token;
                 the prompt pass's working set of one layer, c·max(4·h + 3·i, 2·(8·d + 2·f)) (the LLM's, or the
                 audio encoder's at two encoder positions per audio token), for the 1/B of them that are prompt;
                 the logits of each sequence's last position, V·(c + 3·4) (fp32 copies for the scores), shared by
                 its at least N tokens
    overhead     memory_plan's fixed 4 GiB (CUDA context, workspaces), and a tenth of the rest for the allocator's
                 fragmentation as the cache grows step by step

    budget = 0.9·(M − 4 GiB − c·W) / per token
"""

from __future__ import annotations

from lalm_slu.model.memory_plan import GIB, OVERHEAD_GIB, Architecture, parameter_sizes

# The caching allocator's fragmentation as the cache grows one position at a time.
FRAGMENTATION = 0.1
# fp32 copies of one row of logits while scoring: the cast, log-softmax, and beam scores added.
SCORE_BYTES = 3 * 4


def decode_batch_tokens(architecture: dict, card_memory_gb: float, num_beams: int, max_new_tokens: int,
                        dtype_bytes: int) -> int:
    """Padded tokens × beams (prompt and new tokens) one generate() call may hold on a card of `card_memory_gb`
    GiB, for the model whose config.json is `architecture` (see the module's docstring)."""
    arch = Architecture.from_config(architecture)
    c = dtype_bytes
    weights = c * sum(parameter_sizes(arch).values())
    cache = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * c
    llm_layer = 4 * arch.hidden_size + 3 * arch.intermediate_size
    audio_layer = 2 * (8 * arch.audio_width + 2 * arch.audio_ffn_size)
    prompt_pass = c * max(llm_layer, audio_layer) / num_beams
    logits = arch.vocab_size * (c + SCORE_BYTES) / max_new_tokens
    free = (1 - FRAGMENTATION) * (card_memory_gb * GIB - OVERHEAD_GIB * GIB - weights)
    if free <= 0:
        raise ValueError(f"the model's weights ({weights / GIB:.1f} GiB) and {OVERHEAD_GIB:g} GiB of overhead do not "
                         f"fit a {card_memory_gb:g} GiB card")
    return int(free // (cache + prompt_pass + logits))


def longest_first_batches(prompt_tokens: list[int], max_prompts: int, max_tokens: int | None, num_beams: int,
                          max_new_tokens: int) -> list[list[int]]:
    """Indices of the prompts in batches, longest first (the first batch shows at once whether memory suffices):
    each batch takes the next prompts while it holds at most `max_prompts` of them and, with a budget, at most
    `max_tokens` tokens, padded to its first (longest) prompt, times the beams. A prompt over the budget on its own
    still gets a batch of its own."""
    order = sorted(range(len(prompt_tokens)), key=lambda i: -prompt_tokens[i])
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if current is not None and len(current) < max_prompts and (
            max_tokens is None
            or (len(current) + 1) * (prompt_tokens[current[0]] + max_new_tokens) * num_beams <= max_tokens
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches
