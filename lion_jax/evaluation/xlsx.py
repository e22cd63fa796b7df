"""A one-sheet .xlsx file of text cells, for leaderboards that take Excel uploads (MMBench).

Written with the standard library (zipfile + the Office Open XML parts a spreadsheet needs: content
types, relationships, workbook, one worksheet of inline strings), so evaluation needs no spreadsheet
package. Excel, LibreOffice, openpyxl and pandas read it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CONTENT_TYPES = (
  '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
  '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
  '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
  '<Default Extension="xml" ContentType="application/xml"/>'
  '<Override PartName="/xl/workbook.xml" '
  'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
  '<Override PartName="/xl/worksheets/sheet1.xml" '
  'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
  "</Types>"
)
_ROOT_RELS = (
  f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_PKG_REL}">'
  f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
)
_WORKBOOK = (
  f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="{_MAIN}" xmlns:r="{_REL}">'
  '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
_WORKBOOK_RELS = (
  f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="{_PKG_REL}">'
  f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
)


def column_name(i: int) -> str:
  """0 -> A, 25 -> Z, 26 -> AA (spreadsheet column letters)."""
  name = ""
  i += 1
  while i:
    i, r = divmod(i - 1, 26)
    name = chr(ord("A") + r) + name
  return name


def _cell(ref: str, value) -> str:
  return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{escape(str(value))}</t></is></c>'


def write(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
  """`header` then `rows` as text cells of the first sheet of a new .xlsx at `path`."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sheet_rows = []
  for r, values in enumerate([header, *rows], 1):
    cells = "".join(_cell(f"{column_name(c)}{r}", v) for c, v in enumerate(values))
    sheet_rows.append(f'<row r="{r}">{cells}</row>')
  sheet = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="{_MAIN}">'
    f"<sheetData>{''.join(sheet_rows)}</sheetData></worksheet>"
  )
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("[Content_Types].xml", _CONTENT_TYPES)
    z.writestr("_rels/.rels", _ROOT_RELS)
    z.writestr("xl/workbook.xml", _WORKBOOK)
    z.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
    z.writestr("xl/worksheets/sheet1.xml", sheet)
  return path
