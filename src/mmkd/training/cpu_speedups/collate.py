"""Collate each SFT example once and build every later batch from the cache (``cache_collated``).

TRL collates vision-language batches on the fly: every step it decodes the batch's images, renders the chat
template and runs the processor (image transforms, tokenisation) on every example, in the training process. For a
large model that is a small share of a step, and caching every example's pixels would take a lot of memory (TRL
says as much), so the default leaves it as it is. On the CPU demo's tiny models it is a large share of a step
(docs/performance.md#cpu-speed-ups-for-tiny-models), and the same examples come back every epoch:
``CachedCollator`` runs TRL's own collator once per example, keeps the single-example tensors, and pads each batch
from them. The batches are the ones TRL builds (tested tensor by tensor on both model families), so training gives
the same weights; only the time differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ROW_KEY = "_row"  # the dataset column that names each example, so its collated tensors can be looked up

# Per-token tensors (batch, tokens) and the value that pads them on the right, as TRL's collator pads them.
TOKEN_PAD = {"attention_mask": 0, "completion_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0, "labels": -100}


class CachedCollator:
    """Wrap a batch collator (TRL's ``DataCollatorForVisionLanguageModeling``) so that each example is collated once.

    The training dataset carries only ``ROW_KEY`` (a row's index in ``examples``) and undecoded images (TRL tells a
    vision dataset by its ``images`` column), so fetching a batch costs next to nothing; on a cache miss ``inner``
    collates the full example ``examples[row]`` alone. A batch is the per-example tensors padded on the right
    (``input_ids`` with ``pad_token_id``, the others as in ``TOKEN_PAD``); tensors that are not per-token (pixels,
    image grids) are concatenated along the first dim.
    """

    def __init__(self, inner: Callable[[list[dict]], dict], pad_token_id: int, examples: Sequence[dict]):
        self.inner = inner
        self.examples = examples
        self.pad = {"input_ids": pad_token_id, **TOKEN_PAD}
        self.cache: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        singles = []
        for example in batch:
            if ROW_KEY not in example:
                raise KeyError(f"CachedCollator needs a {ROW_KEY!r} column in the dataset; got {sorted(example)}")
            row = example[ROW_KEY]
            if row not in self.cache:
                self.cache[row] = self.inner([self.examples[row]])
            singles.append(self.cache[row])
        return self._merge(singles)

    def _merge(self, singles: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(s["input_ids"].shape[1] for s in singles)
        batch = {}
        for key in singles[0]:
            parts = [s[key] for s in singles]
            if key in self.pad:
                padded = parts[0].new_full((len(parts), width), self.pad[key])
                for i, p in enumerate(parts):
                    padded[i, : p.shape[1]] = p[0]
                batch[key] = padded
            else:
                batch[key] = torch.cat(parts, dim=0)
        return batch
