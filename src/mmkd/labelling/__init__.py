"""Teacher labelling: each teacher answers every item (``label@<teacher>``), from a local model or a server."""
