"""Running models on images: devices, threads and memory (``devices``), tiled inference
(``infer``), ``upscale`` with the projection after the network (``upscale``), folder jobs
(``batch``) and detail maps (``detail``). May import ``core``, ``nets``, ``formats`` and ``models``.
"""
