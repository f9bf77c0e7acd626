"""Reports: PNG overlays and montages of attribution maps, and a self-contained HTML report.

Importing this package is cheap: matplotlib and jinja2 load only when a figure or report is written.
"""
from __future__ import annotations

from segxai.report.html import Figure, Section, quantity_rows, write_report
from segxai.report.overlay import choose_slice, save_montage, save_overlay
from segxai.report.views import save_views, views_like

__all__ = ["Figure", "Section", "choose_slice", "quantity_rows", "save_montage", "save_overlay", "save_views",
           "views_like", "write_report"]
