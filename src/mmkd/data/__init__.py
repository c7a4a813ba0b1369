"""Ingestion of real datasets into the item schema (``mmkd.schema``): the library behind the ``prepare`` stage.

``kinds`` maps each entry's ``kind`` to its prepare function (the one registry) and checks a params entry;
``newsclippings`` makes items of NewsCLIPpings annotations, VisualNews records and images, and (optionally) the CCN
web evidence, read by ``newsclippings_inputs``; ``verite`` of the VERITE CSV; ``records`` is what every dataset
shares (settings, caption and image checks, the report, the table writer); ``images`` checks and links each image;
``evidence`` reads the CCN inverse-search files; ``raw_paths`` resolves the paths written in raw records inside
their root; ``json_stream`` streams large JSON files with a bound on nesting; ``text`` is the one cleaning rule for
captions and evidence; ``staging`` builds the output folder beside the old one and swaps it in only when the run
succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass


class PrepareInputError(ValueError):
    """A raw input is missing or malformed as a whole, so nothing is prepared; the message names the file and fix."""


@dataclass(frozen=True)
class Problem:
    """Why a raw record cannot be used (or was changed): a reason code (counted), what was found, how to fix it."""

    reason: str
    detail: str
    fix: str
    path: str | None = None  # the file or path (as written in the raw record) the problem is about
