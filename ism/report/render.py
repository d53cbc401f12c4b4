"""Render a report (a list of blocks) as Markdown and as a PDF with real tables and embedded figures (reportlab)."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

from ism.report.tables import Table


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Figure:
    title: str
    path: Path | None      # None: the figure has no data
    reason: str = ""       # one line saying why, when path is None


Block = Heading | Para | Table | Figure


# ----------------------------------------------------------------------------------------------- Markdown
def _md_cell(s: str, bold: bool) -> str:
    s = str(s).replace("|", "\\|").replace("\n", " ")
    return f"**{s}**" if bold and s.strip() else s


def md_table(t: Table) -> str:
    """A GitHub pipe table (bold cells marked with **)."""
    lines = ["| " + " | ".join(_md_cell(c, False) for c in t.columns) + " |",
             "|" + "|".join("---" for _ in t.columns) + "|"]
    for i, row in enumerate(t.rows):
        lines.append("| " + " | ".join(_md_cell(c, (i, j) in t.bold) for j, c in enumerate(row)) + " |")
    return "\n".join(lines)


def markdown(blocks: list[Block], out_dir: Path) -> str:
    """The Markdown of blocks; figure links are relative to out_dir."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            parts.append(b.text)
        elif isinstance(b, Table):
            parts.append(f"**{b.title}**\n\n{md_table(b)}" + (f"\n\n*{b.note}*" if b.note else ""))
        elif isinstance(b, Figure):
            parts.append(f"![{b.title}]({b.path.relative_to(out_dir).as_posix()})\n\n*{b.title}*" if b.path
                         else f"*{b.title}: {b.reason}.*")
    return "\n\n".join(parts) + "\n"


def render_markdown(blocks: list[Block], out_dir: Path) -> Path:
    """Write out_dir/report.md; figure links are relative to it."""
    path = out_dir / "report.md"
    path.write_text(markdown(blocks, out_dir))
    return path


# ----------------------------------------------------------------------------------------------- PDF
def _fonts() -> tuple[str, str]:
    """DejaVu Sans from matplotlib's own font folder (covers ±, Δ, →, ⚠), else the built-in Helvetica."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    import matplotlib
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    try:
        if "DejaVu" not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont("DejaVu", str(ttf / "DejaVuSans.ttf")))
            pdfmetrics.registerFont(TTFont("DejaVu-Bold", str(ttf / "DejaVuSans-Bold.ttf")))
        return "DejaVu", "DejaVu-Bold"
    except Exception:  # a matplotlib build without its fonts: fall back to the PDF base font
        return "Helvetica", "Helvetica-Bold"


def _col_widths(t: Table, total: float) -> list[float]:
    """Column widths proportional to their longest text, bounded so no column starves."""
    lens = [max([len(str(c))] + [len(str(r[j])) for r in t.rows]) for j, c in enumerate(t.columns)]
    lens = [min(max(n, 6), 60) for n in lens]
    s = sum(lens)
    return [total * n / s for n in lens]


def render_pdf(blocks: list[Block], path: Path, title: str) -> Path:
    """Landscape A4 PDF: headings, paragraphs, tables (wrapped cells, header repeated), figures scaled to fit."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer
    from reportlab.platypus import Table as RLTable
    from reportlab.platypus import TableStyle

    font, bold = _fonts()
    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontName=font, fontSize=9, leading=11.5)
    small = ParagraphStyle("small", parent=body, fontSize=7, leading=8.6)
    small_b = ParagraphStyle("small_b", parent=small, fontName=bold)
    note = ParagraphStyle("note", parent=body, fontSize=7.5, leading=9, textColor=colors.HexColor("#444444"))
    heads = {1: ParagraphStyle("h1", parent=ss["Title"], fontName=bold, fontSize=17),
             2: ParagraphStyle("h2", parent=ss["Heading2"], fontName=bold, fontSize=13),
             3: ParagraphStyle("h3", parent=ss["Heading3"], fontName=bold, fontSize=10.5)}
    doc = SimpleDocTemplate(str(path), pagesize=landscape(A4), leftMargin=1.2 * cm, rightMargin=1.2 * cm,
                            topMargin=1.2 * cm, bottomMargin=1.2 * cm, title=title, author="ism report")
    fw, fh = doc.width, doc.height
    story = []
    for b in blocks:
        if isinstance(b, Heading):
            story.append(Paragraph(escape(b.text), heads.get(b.level, heads[3])))
        elif isinstance(b, Para):
            story.append(Paragraph(_inline(b.text), body))
        elif isinstance(b, Table):
            data = [[Paragraph(escape(str(c)), small_b) for c in b.columns]]
            data += [[Paragraph(escape(str(c)), small_b if (i, j) in b.bold else small) for j, c in enumerate(row)]
                     for i, row in enumerate(b.rows)]
            tbl = RLTable(data, colWidths=_col_widths(b, fw), repeatRows=1, hAlign="LEFT")
            tbl.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                                     ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8f0")),
                                     ("VALIGN", (0, 0), (-1, -1), "TOP"),
                                     ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
            story += [Paragraph(escape(b.title), heads[3]), tbl]
            if b.note:
                story.append(Paragraph(escape(b.note), note))
            story.append(Spacer(1, 6))
        elif isinstance(b, Figure):
            if b.path is None:
                story.append(Paragraph(f"<i>{escape(b.title)}: {escape(b.reason)}.</i>", body))
                continue
            iw, ih = ImageReader(str(b.path)).getSize()
            scale = min(fw / iw, (fh - 2.2 * cm) / ih, 1.6)
            story.append(KeepTogether([Image(str(b.path), iw * scale, ih * scale),
                                       Paragraph(escape(b.title), note), Spacer(1, 6)]))
    doc.build(story)
    return path


def _inline(text: str) -> str:
    """Markdown **bold** and `code` in a paragraph as reportlab markup."""
    out, parts = [], escape(text).split("**")
    for i, p in enumerate(parts):
        segs = p.split("`")
        p = "".join(f"<font face='Courier'>{s}</font>" if k % 2 else s for k, s in enumerate(segs))
        out.append(f"<b>{p}</b>" if i % 2 else p)
    return "".join(out)
