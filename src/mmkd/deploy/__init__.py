"""After training: predict with an adapter, export a merged model to serve, share runs over a DVC remote."""


class ExportError(Exception):
    """A problem the user can fix (a missing adapter, an output directory in the way); the message says what."""
