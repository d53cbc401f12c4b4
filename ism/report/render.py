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
    full_page: bool = False  # may fill a page (sample grids); others take at most half a page


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


# ----------------------------------------------------------------------------------------------- LaTeX
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
        "–": "--", "→": r"$\to$", "≈": r"$\approx$", "≤": r"$\le$", "≥": r"$\ge$", "Δ": r"$\Delta$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex_table(t: Table) -> str:
    """A booktabs tabular of the table as shown (bold cells as \\textbf), its title as a comment, for papers."""
    head = " & ".join(rf"\textbf{{{_tex(c)}}}" for c in t.columns) + r" \\"
    body = [" & ".join(rf"\textbf{{{_tex(c)}}}" if (i, j) in t.bold else _tex(c) for j, c in enumerate(row)) + r" \\"
            for i, row in enumerate(t.rows)]
    return "\n".join([f"% {t.title}" + (f" -- {t.note}" if t.note else ""), "% needs \\usepackage{booktabs}",
                      r"\begin{tabular}{" + "l" * len(t.columns) + "}", r"\toprule", head, r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


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


PAD_PT = 12.0  # reportlab's default cell padding, left + right


def col_widths(t: Table, total: float, measure=None) -> list[float]:
    """Column widths proportional to their longest text, but never narrower than the column's longest word
    (header included: a 'seeds' header must not wrap letter by letter), measured by measure(text, bold) in points."""
    measure = measure or (lambda text, bold: 4.3 * len(text))  # ~7 pt DejaVu Sans, when no font is at hand
    cols = range(len(t.columns))
    lens = [min(max([len(str(t.columns[j]))] + [len(str(r[j])) for r in t.rows] + [6]), 60) for j in cols]
    need = [PAD_PT + max([measure(w, True) for w in str(t.columns[j]).split()] +
                         [measure(w, (i, j) in t.bold) for i, r in enumerate(t.rows) for w in str(r[j]).split()] + [0])
            for j in cols]
    fixed: dict[int, float] = {}
    while True:  # columns whose share is below their need get their need; the rest share what is left
        free = [j for j in cols if j not in fixed]
        room = total - sum(fixed.values())
        share = {j: room * lens[j] / max(sum(lens[k] for k in free), 1) for j in free}
        starved = [j for j in free if share[j] < need[j]]
        if not starved or room <= 0:
            break
        fixed.update({j: need[j] for j in starved})
    widths = [fixed.get(j, share.get(j, 0.0)) for j in cols]
    over = sum(widths) / total
    return [w / over for w in widths] if over > 1 else widths


# Over 60 lines on purpose: one dispatch over the four block kinds with reportlab's styles local to it.
def render_pdf(blocks: list[Block], path: Path, title: str) -> Path:
    """Landscape A4 PDF: headings, paragraphs, tables (wrapped cells, header repeated), figures scaled to fit."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer
    from reportlab.platypus import Table as RLTable
    from reportlab.platypus import TableStyle

    from reportlab.pdfbase.pdfmetrics import stringWidth

    font, bold = _fonts()

    def measure(text: str, is_bold: bool) -> float:
        return stringWidth(text, bold if is_bold else font, 7)
    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontName=font, fontSize=9, leading=11.5)
    small = ParagraphStyle("small", parent=body, fontSize=7, leading=8.6)
    small_b = ParagraphStyle("small_b", parent=small, fontName=bold)
    note = ParagraphStyle("note", parent=body, fontSize=7.5, leading=9, textColor=colors.HexColor("#444444"))
    # keepWithNext: a heading (or a table's title) never ends a page without what it introduces
    heads = {1: ParagraphStyle("h1", parent=ss["Title"], fontName=bold, fontSize=17, keepWithNext=1),
             2: ParagraphStyle("h2", parent=ss["Heading2"], fontName=bold, fontSize=13, keepWithNext=1),
             3: ParagraphStyle("h3", parent=ss["Heading3"], fontName=bold, fontSize=10.5, keepWithNext=1)}
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
            tbl = RLTable(data, colWidths=col_widths(b, fw, measure), repeatRows=1, hAlign="LEFT")
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
            # wide figures at most ~half a page high, so two share a page; sample grids and tall figures (bars of
            # many variants) may fill a page, or they would shrink to unreadable
            full = b.full_page or ih > 0.5 * iw
            scale = min(fw / iw, ((fh - 2.2 * cm) if full else 0.42 * fh) / ih, 1.6)
            img = Image(str(b.path), iw * scale, ih * scale)
            # keepWithNext chains heading -> image -> caption into one KeepTogether (reportlab cannot chain a
            # heading to a KeepTogether: that is why headings were left at page bottoms)
            img.keepWithNext = 1
            story += [img, Paragraph(escape(b.title), note), Spacer(1, 6)]
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
