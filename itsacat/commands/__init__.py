"""Subcommands of `itsacat`, one module each."""
