"""Differential privacy at the site: DP-SGD settings, cryptographic noise and accounting."""
