"""Developer tools that check the repository itself (not part of the installed packages)."""
