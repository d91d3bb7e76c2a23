"""Everything that touches git and Docker; the only package that imports docker."""
