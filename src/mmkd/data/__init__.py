"""Ingestion of real datasets into the item schema (``mmkd.schema``): the library behind the ``prepare`` stage.

``newsclippings`` reads NewsCLIPpings annotations, VisualNews records and images, and (optionally) the CCN web
evidence; ``images`` checks and links each image; ``evidence`` reads the CCN inverse-search files.
"""


class PrepareInputError(ValueError):
    """A raw input is missing or malformed as a whole, so nothing is prepared; the message names the file and fix."""
