"""What a model is and where its weights come from: the ``SRModel`` descriptor (``model``), the
catalog of known models with digests (``catalog``), reading checkpoints of the ecosystem
(``state_dicts``), the offline ncnn copy (``ncnn``), downloads pinned by digest (``downloads``), and
``load_model`` (``weights``); the discriminator and VGG19 that training starts from (``pretrained``).
May import ``core``, ``nets`` and ``formats``.
"""
