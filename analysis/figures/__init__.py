"""Figures 3, 4, 6, 7, 8 and Table 7 of the LoRA paper (§7, App. H) from saved runs.

``python -m analysis.figures --results results`` (``make figures``) rebuilds them all; see
:mod:`analysis.figures.build` for the file list and :mod:`analysis.figures.__main__` for flags.
"""

from analysis.figures.build import build_all
from analysis.figures.options import ARTIFACTS, Options, Report

__all__ = ["ARTIFACTS", "Options", "Report", "build_all"]
