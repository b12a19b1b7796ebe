"""The evaluation report: ideal vs coded curves, classic codecs, lossless points, the paper's split."""
