"""Reports: PNG overlays and montages of attribution maps, and a self-contained HTML report.

Importing this package is cheap: matplotlib and jinja2 load only when a figure or report is written.
"""
from __future__ import annotations

from segxai.report.html import Figure, Section, write_report
from segxai.report.overlay import choose_slice, save_montage, save_overlay

__all__ = ["Figure", "Section", "choose_slice", "save_montage", "save_overlay", "write_report"]
