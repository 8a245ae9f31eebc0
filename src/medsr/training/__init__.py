"""Making models: the Real-ESRGAN degradation (``degrade``), training data (``data``), losses,
the fine-tuning loop with exact resume (``train``, ``checkpoint``, ``config``), and the compact
models trained for the values contract (``contract``). May import every wing below it (``engine``
for devices and memory).
"""
