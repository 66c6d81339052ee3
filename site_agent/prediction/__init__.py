"""Applying an exported model at a site: read images, predict, threshold, explain."""
