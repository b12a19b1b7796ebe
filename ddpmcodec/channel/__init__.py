"""Channel simulation: sending a sample of q under the receiver's p with shared randomness (PFR in chunks)."""
