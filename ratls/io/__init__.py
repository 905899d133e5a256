"""Edges of the core that touch the filesystem or network: sim key directory, collateral cache, PCCS."""
