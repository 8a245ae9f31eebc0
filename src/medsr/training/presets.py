"""Named fine-tuning settings: overrides of the defaults in ``config`` (plain data, importable
without PyTorch: the command line lists them in its help)."""

from __future__ import annotations

_FIDELITY = {
    "loss": {"gan_weight": 0.0, "perceptual_weight": 0.0},
    "model": {"d_warmup_iters": 0},
    "optim": {"lr_g": 2e-4},
    "degrade": {"sharpen": {"weight": 0.0}},
}

PRESETS: dict[str, dict] = {
    # The paper's recipes at batch 10, GT 256: STARE-like retina sets, and chest X-rays with
    # multi-scale data (prepare it with `medsr prepare multiscale`).
    "retina": {"run": {"iterations": 3000}},
    "cxr": {"run": {"iterations": 16600}},
    # The fidelity recipe (Real-ESRNet stage of Real-ESRGAN): the generator alone, pixel loss only,
    # against the true ground truth (no unsharp mask: sharpening would be a target to invent for).
    # Learning rate 2e-4 as upstream's train_realesrnet_x4plus.yml.
    "retina-fidelity": {"run": {"iterations": 3000}, **_FIDELITY},
    "cxr-fidelity": {"run": {"iterations": 16600}, **_FIDELITY},
    # MR and CT slices (NIfTI volumes in data.train): the fidelity recipe at the CPU's light setting,
    # from the chest X-ray fidelity model (gray, medical), with a milder degradation than photographs
    # need: scanners blur and add little noise, and no JPEG touches a volume (quality 90+), and the
    # last resize is the area mean, as a detector of coarser pitch averages (docs/models/ct-fidelity.md).
    "volume-fidelity": {
        **_FIDELITY,
        "model": {"d_warmup_iters": 0, "init_g": "cxr-fidelity"},
        "data": {"batch_size": 4, "gt_size": 128, "pool_size": 40},
        "run": {"iterations": 3000},
        "degrade": {
            "sharpen": {"weight": 0.0},
            "first": {"blur_prob": 0.5, "blur": {"sigma": [0.2, 1.5]}, "resize_probs": [0.1, 0.6, 0.3],
                      "resize_range": [0.5, 1.2], "noise_sigma": [0.5, 5.0], "poisson_scale": [0.05, 0.5],
                      "jpeg_quality": [90, 100]},
            "second": {"blur_prob": 0.2, "blur": {"sigma": [0.2, 1.0]}, "resize_probs": [0.1, 0.4, 0.5],
                       "resize_range": [0.7, 1.2], "noise_sigma": [0.5, 3.0], "poisson_scale": [0.05, 0.3],
                       "jpeg_quality": [95, 100]},
            "final_sinc_prob": 0.1,
            "resize_modes": ["area"],
        },
    },
    # A smoke test of the whole pipeline on your data in well under a minute on a CPU: a tiny random
    # network, nothing pretrained, nothing to download. It checks data, degradation, losses and
    # checkpoints; the model it makes is useless.
    "tiny": {"model": {"preset": "tiny", "init_g": "scratch", "d_warmup_iters": 2},
             "loss": {"perceptual_weight": 0.0},
             "data": {"batch_size": 2, "gt_size": 64, "pool_size": 4, "val_images": 2},
             "run": {"iterations": 20, "log_every": 5, "save_every": 10, "val_every": 10}},
    # A CPU setting: a few hundred iterations in about two hours on 2 cores (docs/BENCHMARKS.md).
    "cpu-light": {"data": {"batch_size": 4, "gt_size": 128, "pool_size": 40}, "run": {"iterations": 600},
                  "model": {"d_warmup_iters": 20}},
}
