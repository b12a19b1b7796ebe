"""The progressive codec (Algorithms 3 and 4) and the operations on its files that need no network."""
