"""Local web apps over the library: the viewer with its fidelity dial (``view``), the blinded
reader study (``study``), the Starlette app that serves both (``app``) and their pages. May import
every wing below it; nothing below imports it.
"""
