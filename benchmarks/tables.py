"""The benchmark scripts' text tables (no JAX: subprocess-only scripts use it too)."""

from __future__ import annotations

# A table column: (row key, title, format of a value).
Column = tuple[str, str, str]


def format_table(rows: list[dict], columns: list[Column]) -> str:
  """The rows as a right-aligned text table ('–' where a figure does not apply)."""
  cells = [[title for _, title, _ in columns]]
  cells += [["–" if row[key] is None else fmt.format(row[key]) for key, _, fmt in columns]
            for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  lines = [" | ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
  return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
