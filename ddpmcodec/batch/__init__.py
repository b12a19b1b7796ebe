"""Batch coding of many images on worker processes or Ray; every output byte-identical to a single-image run."""
from ddpmcodec.batch.api import decode_many, encode_many  # noqa: F401
