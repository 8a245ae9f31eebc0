"""Values and operations every other wing shares, importing no other part of medsr: the ``Image``
record and its errors (``image``), atomic writes and digests (``files``), resizing (``resize``), blur
kernels (``kernels``), the values contract (``consistency``: the block-mean operator, its measure and
the projection onto it), metrics with an explicit data range (``metrics``) and the version.
"""
