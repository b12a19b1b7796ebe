"""The .ddpm container: header, checks and their validation. Knows bytes, not networks."""
