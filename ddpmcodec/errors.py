"""Exceptions the CLI reports as one-line messages (exit code 1)."""


class CodecError(Exception):
    """Base class for every expected failure: bad input, wrong model, corrupt file, refused overwrite."""


class FormatError(CodecError):
    """The file is not a valid .ddpm container (bad magic, version, CRC, truncated header...)."""


class ModelMismatchError(CodecError):
    """The file was encoded with a different model than the one supplied."""


class DeterminismError(CodecError):
    """The decoder could not reproduce the encoder's state (checksum mismatch)."""


class InputError(CodecError):
    """An input image or option the codec cannot use."""


def one_line(e: Exception) -> str:
    """'TypeName: first line of the message', for wrapping a library's exception into a one-line error."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
