"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class HagridEdgeError(Exception):
    """Bad input or an unmet requirement; the message names the file, entry or option at fault."""


class SpecError(HagridEdgeError):
    """A model spec is missing, malformed or does not fit its artifact."""


class DataError(HagridEdgeError):
    """A HaGRID annotation file, image or data root is missing or malformed."""
