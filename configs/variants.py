"""`VARIANT[,MODIFIER...]` strings of the config files (e.g. `configs/prime.py:tiny,rloo`)."""


def split(variant: str | None, file: str, variants: tuple[str, ...], modifiers: tuple[str, ...]) -> tuple[str, list[str]]:
  """(base variant or "", modifiers) of `variant`; the base may be omitted (`sum,verified`).
  Raises naming `file` and the known names on anything else."""
  parts = [v.strip() for v in (variant or "").split(",")]
  base, rest = (parts[0], parts[1:]) if parts[0] not in modifiers else ("", parts)
  if base not in ("", *variants):
    raise ValueError(f"unknown variant {base!r} of {file}; known: {variants}")
  unknown = [m for m in rest if m not in modifiers]
  if unknown:
    raise ValueError(f"unknown modifier {unknown[0]!r} of {file}; known: {modifiers}")
  return base, rest
