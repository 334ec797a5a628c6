"""Imports a package that the project's virtualenv has but no code package or layer does:
on Lambda, and so on the embedded stack, loading this handler fails."""

import moto  # noqa: F401


def handler(event, context):
    return {"imported": "moto"}
