"""Join training targets to their items: add each row's image path and the student's rendered prompt."""

from __future__ import annotations

import polars as pl

from mmkd.prompts import get_prompt


def with_prompts(rows: pl.DataFrame, items: pl.DataFrame, prompt_version: str) -> pl.DataFrame:
    """``rows`` (keyed by ``id``) plus ``image_path`` and ``prompt`` from ``items``, in the student's prompt."""
    template = get_prompt(prompt_version)
    prompts = items.select(
        "id",
        "image_path",
        pl.struct("caption", "evidence_entities", "evidence_captions")
        .map_elements(
            lambda r: template.render(r["caption"], r["evidence_entities"], r["evidence_captions"]),
            return_dtype=pl.String,
        )
        .alias("prompt"),
    )
    joined = rows.join(prompts, on="id", how="left", maintain_order="left")
    missing = joined.filter(pl.col("image_path").is_null())["id"].to_list()
    if missing:
        raise ValueError(f"training rows refer to unknown item id(s) {missing[:5]}; re-run labelling and split")
    return joined
