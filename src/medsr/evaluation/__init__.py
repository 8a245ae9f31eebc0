"""Judging models: the protocols (``evaluate``), paired statistics (``stats``), figures
and the HTML report (``figures``, ``report``). May import every wing below it (``training`` for the
degradation sheet).
"""
