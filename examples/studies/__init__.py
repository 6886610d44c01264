"""Reproducible studies: does SoftAdapt help? (see README.md)."""
