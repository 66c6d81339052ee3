"""The raw random-bit generator behind DP noise; only ``clinfl.privacy`` may import it."""
