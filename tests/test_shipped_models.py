"""Regression guards of the shipped models: on two images (or slices) of the shared validation sets,
never trained on, each model's gain over bicubic in PSNR and SSIM stays at least what its card's
evaluation command measured, less a margin. A worse model cannot replace a better one unnoticed.

Reference gains: per_image.csv of the evaluation run that each model card gives (medsr evaluate
with the protocol's defaults, consistency on, bf16 on a 2-core AMD EPYC with AVX512-BF16): the
model's value minus bicubic's on the same image. The margins cover fp32 (these tests) against
bf16 (those runs) and CPU kinds: 0.1 dB and 0.002 SSIM for the fidelity models; 0.3 dB and 0.01
for the GAN models, whose sharp textures move more with the precision (measured: the cxr model's
SSIM gain on 00000404_000 is -0.0359 in fp32, -0.0287 in bf16). A retrained model that loses
more than that on an image fails here.
"""


import nibabel as nib
import numpy as np
import pytest

from medsr.core.resize import resize_bicubic
from medsr.evaluation.evaluate import PROTOCOLS, Model, Options, Sample, build_models, evaluate_sample, find_samples

from .conftest import shared_image

PSNR_MARGIN, SSIM_MARGIN = 0.1, 0.002
GAN_MARGINS = {"retina": (0.3, 0.01), "cxr": (0.3, 0.01)}

# model -> (protocol, [(image or slice, PSNR gain, SSIM gain) over bicubic, from the card's run])
REFERENCES = {
    "retina-fidelity": ("retina-x2", [("Image_01L", 0.3024, 0.00334), ("Image_04R", 0.3529, 0.00287)]),
    "retina": ("retina-x2", [("Image_01L", -0.0141, -0.00157), ("Image_04R", 0.1918, -0.00020)]),
    "cxr-fidelity": ("cxr-x4", [("00000404_000", 0.3142, 0.00404), ("00000679_000", 0.2721, 0.00191)]),
    "cxr": ("cxr-x4", [("00000404_000", 0.1147, -0.0287), ("00000679_000", -0.6624, -0.03227)]),
    # the compact x2 model (one file, two names): docs/models/ct-fidelity.md's volume-x2 runs, fp32
    "ct-fidelity": ("volume-x2", [(0, 4.6615, 0.01568), (5, 5.0234, 0.01617)]),
    "mri-fidelity": ("volume-x2-mr", [(0, 5.1630, 0.02367), (5, 5.4916, 0.02387)]),
}


def samples_for(protocol: str, names: list, tmp_path) -> list[Sample]:
    if protocol == "retina-x2":
        found = {s.name: s for s in find_samples(shared_image("retina/CHASE_DB1"))}
        return [found[name] for name in names]
    if protocol == "cxr-x4":
        folder = shared_image("cxr/NIH-ChestXray14/val")
        return [Sample(name=name, image=folder / f"{name}.png") for name in names]
    # volume-x2: the validation block (slices 40-59 of the shared thorax CT, or of the VS-SEG MR, as the
    # card made it; the slice numbers count within the block)
    source = "volumes/mr/VS-SEG-001_T1post_z040-099.nii.gz" if protocol == "volume-x2-mr" else \
        "volumes/ct/thorax-BigBore_z040-099.nii.gz"
    volume = nib.load(shared_image(source))
    block = volume.slicer[:, :, 40:60]
    path = tmp_path / "block40-59.nii.gz"
    nib.save(block, path)
    return [Sample(name=f"k{k:03d}", image=path, slice=k, axis=2) for k in names]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_shipped_model_keeps_its_gain_over_bicubic(name, tmp_path):
    protocol, references = REFERENCES[name]
    samples = samples_for(protocol, [ref[0] for ref in references], tmp_path)
    models = [Model("bicubic", lambda lr, size: resize_bicubic(lr, *size)),
              *build_models([name], tile=None, device="cpu", precision="fp32")]
    options = Options(protocol=PROTOCOLS[protocol.removesuffix("-mr")])
    psnr_margin, ssim_margin = GAN_MARGINS.get(name, (PSNR_MARGIN, SSIM_MARGIN))
    for sample, (_, psnr_gain, ssim_gain) in zip(samples, references, strict=True):
        rows = evaluate_sample(sample, models, options).rows
        measured_psnr = rows[name]["psnr"] - rows["bicubic"]["psnr"]
        measured_ssim = rows[name]["ssim"] - rows["bicubic"]["ssim"]
        assert measured_psnr >= psnr_gain - psnr_margin, (sample.name, measured_psnr, psnr_gain)
        assert measured_ssim >= ssim_gain - ssim_margin, (sample.name, measured_ssim, ssim_gain)


def test_the_guard_fails_for_a_worse_model(tmp_path):
    """The check above, run with a model that is bicubic plus a mild blur: its gain falls short."""
    import torch

    from medsr.core.kernels import gaussian_blur

    [sample] = samples_for("retina-x2", ["Image_01L"], tmp_path)

    def blurred(lr, size):
        return gaussian_blur(torch.from_numpy(resize_bicubic(lr, *size))[None], 5, 0.8)[0].numpy()

    models = [Model("bicubic", lambda lr, size: resize_bicubic(lr, *size)), Model("worse", blurred)]
    rows = evaluate_sample(sample, models, Options(protocol=PROTOCOLS["retina-x2"])).rows
    assert rows["worse"]["psnr"] - rows["bicubic"]["psnr"] < 0.3024 - PSNR_MARGIN


@pytest.mark.slow
@pytest.mark.parametrize("name, gain", [("brats_2013_pat0001_1_T1c_subtrMeanDivStd", 1.267),
                                        ("brats_2013_pat0002_1_Flair_subtrMeanDivStd", 0.823)])
def test_the_mr_model_keeps_its_through_plane_gain_on_another_sites_mr(name, gain):
    """docs/models/ct-fidelity.md (and the README): through-plane x4 on BraTS (another site, never
    trained on; 1 mm slices made 4 mm thick by the box profile and thin again) gave +1.27 dB (pat0001
    T1c) and +0.82 dB (pat0002 FLAIR) over lanczos-projected (medsr evaluate --protocol volume-z
    --factor 4 --axis 2, fp32); margin 0.3 dB."""
    import medsr
    from medsr.evaluation import volume_z

    case = volume_z.make_case(shared_image(f"volumes/mr/{name}.nii.gz"), 4, axis=2)
    baseline = volume_z.scores(volume_z.interpolate(case, "lanczos", 4, projected=True), case.truth)
    thin = medsr.upscale(case.thick, model="mri-fidelity", through_plane=True, outscale=4, precision="fp32",
                         device="cpu")
    found = volume_z.scores(np.moveaxis(thin.values, case.axis, 2), case.truth)
    assert found["psnr"] - baseline["psnr"] > gain - 0.3, (found, baseline)
    assert found["ssim"] >= baseline["ssim"]
