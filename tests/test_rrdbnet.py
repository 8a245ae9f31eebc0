import pytest
import torch

from medsr.nets.rrdbnet import RRDBNet, rrdbnet, rrdbnet_from_state_dict


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_x4plus_has_the_published_parameter_count_and_names():
    net = rrdbnet("x4plus")
    # 16,697,987 parameters and 702 tensors: docs/SOURCES.md section 1 (the official checkpoint).
    assert count(net) == 16_697_987
    assert len(net.state_dict()) == 702
    assert "body.22.rdb3.conv5.bias" in net.state_dict()


def test_x2_differs_only_in_conv_first():
    # conv_first sees 3 * 2 * 2 = 12 channels instead of 3: 9 more input channels x 64 x 3 x 3 weights.
    assert count(rrdbnet("x2plus")) - count(rrdbnet("x4plus")) == 9 * 64 * 3 * 3


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_output_shape_per_scale(scale):
    net = rrdbnet("tiny", scale=scale).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 16, 12))
    assert out.shape == (2, 3, 16 * scale, 12 * scale)


def test_constructor_is_keyword_only_and_rejects_typos():
    with pytest.raises(TypeError):
        RRDBNet(4)  # type: ignore[misc]
    with pytest.raises(TypeError):
        RRDBNet(num_blocks=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="scale"):
        RRDBNet(scale=3)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_hyperparameters_are_read_back_from_a_state_dict(scale):
    net = rrdbnet("tiny", scale=scale, num_block=3)
    rebuilt = rrdbnet_from_state_dict(net.state_dict())
    assert (rebuilt.scale, len(rebuilt.body), rebuilt.conv_first.out_channels) == (scale, 3, 8)
    rebuilt.load_state_dict(net.state_dict(), strict=True)


def test_every_parameter_gets_a_finite_gradient():
    net = rrdbnet("tiny")
    net(torch.rand(1, 3, 8, 8)).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
