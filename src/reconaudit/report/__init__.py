"""Analysis, tables, figures and the HTML report of an audit, recomputed from the records alone.

- :func:`analyse` (records, run description) -> :class:`Analysis`: the statistics
- :func:`write_tables`: CSV, Markdown and LaTeX tables
- :func:`make_figures`: PNG and PDF figures
- :func:`build_report`: all of the above plus one self-contained ``report.html``
"""

from .analysis import Analysis, analyse
from .figures import make_figures
from .html import build_report
from .tables import write_tables

__all__ = ["Analysis", "analyse", "build_report", "make_figures", "write_tables"]
