"""Rendering audit reports (site and federation) as JSON, Markdown and self-contained HTML."""
