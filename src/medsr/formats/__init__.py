"""Reading and writing: picture files (PNG, JPEG, TIFF, PNM) and DICOM into ``Image`` records
(``io``, ``dicom``), NIfTI volumes and their geometry (``volume``). May import ``core`` only: a format
knows nothing of models or engines.
"""
