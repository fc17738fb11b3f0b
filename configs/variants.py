"""`VARIANT[,MODIFIER...]` strings of the config files (e.g. `configs/prime.py:tiny,rloo`).

A name given twice, or two names that set the same keys (one group of `exclusive`: the later
one would silently undo part of the earlier one), is an error naming both.
"""
from typing import Sequence


def names(variant: str | None, file: str, known: Sequence[str], *,
          exclusive: Sequence[Sequence[str]] = ()) -> list[str]:
  """The comma-separated names of `variant`, in order ([] for None or ""), each one of `known`,
  none twice and at most one of each group of `exclusive`. Raises naming `file`."""
  given = [v.strip() for v in (variant or "").split(",")]
  if given == [""]:
    return []
  unknown = [n for n in given if n not in known]
  if unknown:
    raise ValueError(f"unknown variant {unknown[0]!r} of {file}; known: {', '.join(known)}")
  _check(given, file, exclusive)
  return given


def split(variant: str | None, file: str, variants: Sequence[str], modifiers: Sequence[str], *,
          exclusive: Sequence[Sequence[str]] = ()) -> tuple[str, list[str]]:
  """(base variant or "", modifiers) of `variant`; the base may be omitted (`sum,verified`).
  At most one base, first; no name twice; at most one modifier of each group of `exclusive`.
  Raises naming `file` and the known names on anything else."""
  parts = [v.strip() for v in (variant or "").split(",")]
  base, rest = (parts[0], parts[1:]) if parts[0] not in modifiers else ("", parts)
  if base not in ("", *variants):
    raise ValueError(f"unknown variant {base!r} of {file}; known: {', '.join(variants)}")
  unknown = [m for m in rest if m not in (*modifiers, *variants)]
  if unknown:
    raise ValueError(f"unknown modifier {unknown[0]!r} of {file}; known: {', '.join(modifiers)}")
  _check([p for p in parts if p], file, (variants, *exclusive))
  late = [m for m in rest if m in variants]  # after a modifier: `rloo,tiny`
  if late:
    raise ValueError(f"variant {late[0]!r} of {file} comes before the modifiers: "
                     f"{','.join([late[0], *(m for m in rest if m != late[0])])}")
  return base, rest


def _check(given: Sequence[str], file: str, exclusive: Sequence[Sequence[str]]) -> None:
  for i, name in enumerate(given):
    if name in given[:i]:
      raise ValueError(f"variant {name!r} of {file} is given twice")
  for group in exclusive:
    clash = [n for n in given if n in group]
    if len(clash) > 1:
      raise ValueError(f"variants {clash[0]!r} and {clash[1]!r} of {file} conflict: pick one")
