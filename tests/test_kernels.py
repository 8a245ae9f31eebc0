import math

import pytest
import torch

from medsr.core.kernels import FAMILIES, KernelParams, filter2d, gaussian_blur, gaussian_kernel, make_kernel


def kernel(family: str, **kw) -> torch.Tensor:
    defaults = dict(size=21, sigma_x=2.0, sigma_y=2.0, theta=0.0, beta=1.0)
    return make_kernel(KernelParams(family=family, **{**defaults, **kw}))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_sums_to_one_and_is_point_symmetric(family):
    k = kernel(family, sigma_x=2.5, sigma_y=1.0, theta=0.7, beta=1.7)
    assert k.shape == (21, 21) and (k >= 0).all()
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    # Every family is a function of x^T S^-1 x, so k(x) = k(-x).
    torch.testing.assert_close(k, torch.flip(k, (0, 1)))


@pytest.mark.parametrize("family", ["iso", "generalized_iso", "plateau_iso"])
def test_isotropic_kernels_have_the_square_symmetries(family):
    k = kernel(family, beta=0.8)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, torch.flip(k, (0,)))
    torch.testing.assert_close(k, torch.rot90(k))


def test_anisotropic_kernel_follows_its_axes():
    wide = kernel("aniso", sigma_x=3.0, sigma_y=0.5)  # wide along x (columns)
    assert wide[10, 14] > wide[14, 10]
    turned = kernel("aniso", sigma_x=3.0, sigma_y=0.5, theta=math.pi / 2)
    torch.testing.assert_close(turned, wide.T, atol=1e-6, rtol=0)


def test_iso_matches_the_gaussian_formula():
    k = kernel("iso", size=7, sigma_x=1.3, sigma_y=1.3)
    ax = torch.arange(7, dtype=torch.float64) - 3
    g = torch.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * 1.3**2))
    torch.testing.assert_close(k, (g / g.sum()).float())


def test_plateau_is_flatter_than_gaussian_at_the_centre():
    plateau, gauss = kernel("plateau_iso", beta=2.0), kernel("iso")
    # Real-ESRGAN's plateau kernel 1 / (1 + (x^T S^-1 x)^beta), S = sigma^2 I: one pixel from the centre
    # with sigma 2, beta 2 it keeps 1 / (1 + (1/4)^2) = 0.9412 of the peak; a Gaussian exp(-1/8) = 0.8825.
    assert (plateau[10, 11] / plateau[10, 10]).item() == pytest.approx(1 / (1 + 0.25**2), rel=1e-5)
    assert (gauss[10, 11] / gauss[10, 10]).item() == pytest.approx(math.exp(-1 / 8), rel=1e-5)


@pytest.mark.parametrize("cutoff", [math.pi / 3, math.pi / 2])
def test_sinc_passes_below_its_cutoff_and_stops_above(cutoff):
    k = make_kernel(KernelParams(family="sinc", size=21, cutoff=cutoff)).double()
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, torch.rot90(k))
    n = 256
    response = torch.fft.fft2(k, s=(n, n)).abs()
    freq = torch.fft.fftfreq(n) * 2 * math.pi
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None] ** 2)
    # A 21-tap window ripples near the edge: compare well inside and well outside the cutoff.
    assert response[radius < 0.6 * cutoff].mean() > 0.9
    assert response[(radius > 1.5 * cutoff) & (radius < math.pi)].mean() < 0.1


def test_padding_keeps_the_kernel_centred():
    k = make_kernel(KernelParams(family="iso", size=7, sigma_x=1.0, sigma_y=1.0), pad_to=21)
    assert k.shape == (21, 21) and k.argmax().item() == 10 * 21 + 10
    assert k[:7].sum() == 0 and k[:, 14:].sum() == 0


def test_filter2d_applies_each_samples_own_kernel():
    images = torch.zeros(2, 3, 15, 15)
    images[:, :, 7, 7] = 1  # an impulse returns the kernel itself
    kernels = torch.stack([kernel("iso", size=5, sigma_x=0.8, sigma_y=0.8),
                           kernel("aniso", size=5, sigma_x=1.5, sigma_y=0.5, theta=0.3)])
    out = filter2d(images, kernels)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(out[b, c, 5:10, 5:10], torch.flip(kernels[b], (0, 1)))


def test_separable_blur_equals_the_2d_gaussian():
    images = torch.rand(2, 1, 40, 40)
    torch.testing.assert_close(gaussian_blur(images, 9, 2.0), filter2d(images, gaussian_kernel(9, 2.0)),
                               atol=1e-5, rtol=0)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown kernel family 'box'"):
        make_kernel(KernelParams(family="box", size=7))
