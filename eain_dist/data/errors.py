"""User-facing data errors."""


class InputError(Exception):
    """Bad input data or sources (a missing file, an unknown format, ...).

    The message is one line that names the offending source, so the command line can print it
    as the reason for a non-zero exit without a traceback.
    """
