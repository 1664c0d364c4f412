"""The export's user-facing error."""


class ExportError(ValueError):
    """Export cannot proceed for a reason the user can act on (empty field, wrong format for the renderer, ...)."""
