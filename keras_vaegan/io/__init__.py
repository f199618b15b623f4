"""File-system plumbing shared by every layer: atomic writes, output path checks, figures."""
