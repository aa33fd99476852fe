"""Markdown table cells for text that models and users wrote."""


def md_cell(text) -> str:
    """One table cell: backslashes, pipes and backticks escaped, newlines shown as ⏎, empty as ∅."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("`", "'")
    return s if s.strip() else "∅"
