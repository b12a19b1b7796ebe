"""Lossless bits-back coding of images and image sets over the same chain (BB-ANS and Bit-Swap orders)."""
