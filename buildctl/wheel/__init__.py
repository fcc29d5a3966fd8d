"""Packaging for one torch target: labels, verify, repair, provenance, reproducible wheels, index.

See `buildctl/wheel/README.md` for the conventions (label scheme, what verify checks, repair
exclusions) and the functions `buildctl wheel`/`verify`/`matrix` call.
"""
