"""Tests of the Ref-Diff U-Net: exact paper size, shapes, SFT wiring, init, config round trips."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from refdiff_cli.errors import ConfigError
from refdiff_cli.model.layers import SFT, Attention, Conv2d, PositionalEmbedding, num_groups
from refdiff_cli.model.network import DecoderBlock, RefDiffUNet
from refdiff_cli.model.network_config import PRESETS, NetworkConfig

PAPER_PARAMETERS = 116_740_739


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(cfg: NetworkConfig, b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (x_in, c_noise, lr_up, ref, mask) on the current default device."""
    if torch.empty(0).device.type == "meta":
        x = torch.empty(b, cfg.image_channels, h, w)
        return x, torch.empty(b), x, x, torch.empty(b, cfg.mask_channels, h, w)
    g = torch.Generator().manual_seed(seed)
    x_in = torch.randn(b, cfg.image_channels, h, w, generator=g)
    c_noise = torch.randn(b, generator=g)
    lr_up = torch.rand(b, cfg.image_channels, h, w, generator=g) * 2 - 1
    ref = torch.rand(b, cfg.image_channels, h, w, generator=g) * 2 - 1
    mask = (torch.rand(b, cfg.mask_channels, h, w, generator=g) > 0.5).float()
    return x_in, c_noise, lr_up, ref, mask


def activate(net: RefDiffUNet, seed: int = 1) -> RefDiffUNet:
    """Redraw every conv at full xavier scale so the 1e-5 init cannot hide a broken path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, Conv2d):
                nn.init.xavier_uniform_(m.weight, generator=g)
    return net


@pytest.fixture(scope="module")
def paper_meta() -> RefDiffUNet:
    with torch.device("meta"):
        return RefDiffUNet(PRESETS["paper"])


# ----------------------------------------------------------------------------- paper network


def test_paper_parameter_count_is_exact(paper_meta: RefDiffUNet) -> None:
    assert n_params(paper_meta) == PAPER_PARAMETERS


def test_paper_structure_breakdown(paper_meta: RefDiffUNet) -> None:
    # 14 encoder blocks (3 x 4 + 2 downsampling), 19 decoder blocks (2 middle + 2 up + 3 x 5).
    assert len(paper_meta.enc) == 14
    assert len(paper_meta.dec) == 19
    sfts = [m for m in paper_meta.modules() if isinstance(m, SFT)]
    assert len(sfts) == 2 * 19
    assert sum(n_params(m) for m in sfts) == 62_318_336
    attentions = [m for m in paper_meta.modules() if isinstance(m, Attention)]
    assert len(attentions) == 1
    assert n_params(attentions[0]) == 263_680
    assert sum(isinstance(b, DecoderBlock) and b.up for b in paper_meta.dec) == 2


def test_paper_flops_match_the_paper(paper_meta: RefDiffUNet) -> None:
    counter = FlopCounterMode(display=False)
    with torch.device("meta"), counter:
        paper_meta(*inputs(paper_meta.config, 1, 256, 256))
    total = counter.get_total_flops()
    sft = sum(
        sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name.endswith(("sft_sem", "sft_tex"))
    )
    assert total == pytest.approx(5.93e12, rel=0.005)
    assert sft / total == pytest.approx(0.55, abs=0.01)


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 128), (256, 256), (64, 192)])
def test_paper_forward_shape_on_meta(paper_meta: RefDiffUNet, h: int, w: int) -> None:
    with torch.device("meta"):
        out = paper_meta(*inputs(paper_meta.config, 2, h, w))
    assert out.shape == (2, 3, h, w)


def test_tiny_forward_shape_at_256_on_meta() -> None:
    # Real compute would attend over 128 x 128 tokens: tiny is meant for small test tiles.
    with torch.device("meta"):
        net = RefDiffUNet(PRESETS["tiny"])
        assert net(*inputs(net.config, 1, 256, 256)).shape == (1, 3, 256, 256)


def test_size_multiples() -> None:
    assert PRESETS["paper"].size_multiple == 4
    assert PRESETS["small"].size_multiple == 8
    assert PRESETS["tiny"].size_multiple == 2


def test_preset_sizes() -> None:
    small = n_params(RefDiffUNet(PRESETS["small"]))
    tiny = n_params(RefDiffUNet(PRESETS["tiny"]))
    assert 2_000_000 < small < 5_000_000  # under 20 MB of float32 weights
    assert 100_000 < tiny < 600_000


# ----------------------------------------------------------------------------- real compute


@pytest.mark.parametrize(
    ("preset", "size"),
    [("small", 64), ("small", 128), ("small", 256), ("tiny", 64), ("tiny", 128)],
)
def test_forward_shape_and_finite(preset: str, size: int) -> None:
    cfg = PRESETS[preset]
    net = RefDiffUNet(cfg).eval()
    with torch.no_grad():
        out = net(*inputs(cfg, 1, size, size))
    assert out.shape == (1, 3, size, size)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(("preset", "bad"), [("tiny", 63), ("small", 60), ("paper", 66)])
def test_tile_not_a_multiple_raises(preset: str, bad: int) -> None:
    cfg = PRESETS[preset]
    with torch.device("meta"):
        net = RefDiffUNet(cfg)
        with pytest.raises(ValueError, match=f"size multiple {cfg.size_multiple}"):
            net(*inputs(cfg, 1, bad, cfg.size_multiple * 8))


def test_mismatched_condition_shape_names_both_shapes() -> None:
    cfg = PRESETS["tiny"]
    net = RefDiffUNet(cfg)
    x_in, c_noise, lr_up, ref, _ = inputs(cfg, 2, 32, 32)
    with pytest.raises(
        ValueError, match=r"mask has shape \(2, 1, 16, 32\), expected \(2, 1, 32, 32\)"
    ):
        net(x_in, c_noise, lr_up, ref, torch.zeros(2, 1, 16, 32))
    with pytest.raises(ValueError, match=r"c_noise has shape \(1,\), expected \(2,\)"):
        net(x_in, c_noise[:1], lr_up, ref, torch.zeros(2, 1, 32, 32))


def test_every_sft_layer_receives_gradient() -> None:
    cfg = PRESETS["tiny"]
    net = activate(RefDiffUNet(cfg)).train()
    out = net(*inputs(cfg, 2, 32, 32))
    out.square().mean().backward()
    sfts = [(n, m) for n, m in net.named_modules() if isinstance(m, SFT)]
    assert len(sfts) == 2 * len(net.dec)
    for name, sft in sfts:
        for pname, p in sft.named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert float(p.grad.abs().max()) > 1e-6, f"{name}.{pname} gradient vanishes"


def test_gradient_reaches_sft_through_default_init() -> None:
    # With the EDM 1e-5 init the path is scaled down but must not be cut.
    cfg = PRESETS["tiny"]
    net = RefDiffUNet(cfg).train()
    net(*inputs(cfg, 1, 16, 16)).sum().backward()
    for name, p in net.named_parameters():
        if ".sft_" in name:
            assert p.grad is not None, name
            assert bool((p.grad != 0).any()), name


def test_guides_change_the_output() -> None:
    cfg = PRESETS["tiny"]
    net = activate(RefDiffUNet(cfg)).eval()
    x_in, c_noise, lr_up, ref, mask = inputs(cfg, 1, 32, 32)
    with torch.no_grad():
        base = net(x_in, c_noise, lr_up, ref, mask)
        other_ref = net(x_in, c_noise, lr_up, -ref, mask)
        other_mask = net(x_in, c_noise, lr_up, ref, 1 - mask)
        other_noise = net(x_in, c_noise + 1, lr_up, ref, mask)
    for changed in (other_ref, other_mask, other_noise):
        assert float((changed - base).abs().mean()) > 1e-3 * float(base.abs().mean())


def test_sft_layers_get_the_right_guides() -> None:
    cfg = PRESETS["tiny"]
    net = RefDiffUNet(cfg).eval()
    x_in, c_noise, lr_up, ref, mask = inputs(cfg, 1, 32, 32)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, torch.Tensor]) -> None:
            seen[name] = args

        return record

    for name, module in net.named_modules():
        if isinstance(module, SFT):
            module.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        net(x_in, c_noise, lr_up, ref, mask)
    assert len(seen) == 2 * len(net.dec)
    for name, (feat, guide) in seen.items():
        source = lr_up if name.endswith("sft_sem") else ref
        # The guide reaching the SFT is full size; the SFT resizes it nearest to feat's size.
        torch.testing.assert_close(guide, torch.cat([source, mask], dim=1))
        assert feat.shape[-2:] in ((32, 32), (16, 16))


def test_sft_resizes_its_guide_nearest() -> None:
    sft = SFT(8, 4, 6, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    feat, guide = torch.randn(1, 8, 4, 4, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(sft(feat, guide), sft(feat, guide[:, :, ::4, ::4]))


def test_dropout_inactive_in_eval_mode() -> None:
    cfg = PRESETS["tiny"]
    assert cfg.dropout > 0
    net = activate(RefDiffUNet(cfg))
    args = inputs(cfg, 1, 32, 32)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(*args), net(*args))
        net.train()
        torch.manual_seed(0)
        first = net(*args)
        torch.manual_seed(1)
        assert not torch.equal(first, net(*args))


def test_batch_elements_are_independent() -> None:
    cfg = PRESETS["tiny"]
    net = activate(RefDiffUNet(cfg)).eval()
    args = inputs(cfg, 3, 32, 32)
    with torch.no_grad():
        batched = net(*args)
        single = net(*(a[1:2] for a in args))
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-5)


def test_init_follows_edm_and_seed() -> None:
    cfg = PRESETS["tiny"]
    a, b, c = RefDiffUNet(cfg, seed=3), RefDiffUNet(cfg, seed=3), RefDiffUNet(cfg, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["stem.weight"], sc["stem.weight"])
    head = a.head_conv.weight.detach()
    fan = head.shape[1] * 9 + head.shape[0] * 9
    assert float(head.abs().max()) <= 1e-5 * math.sqrt(6 / fan)
    assert float(sa["dec.0.conv1.weight"].abs().max()) < 1e-5
    stem_bound = math.sqrt(6 / ((cfg.in_channels + cfg.model_channels) * 9))
    assert 0.5 * stem_bound < float(sa["stem.weight"].abs().max()) <= stem_bound
    assert all(float(p.abs().max()) == 0 for k, p in sa.items() if k.endswith("conv0.bias"))


def test_construction_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RefDiffUNet(PRESETS["tiny"])
    assert torch.equal(torch.rand(3), expected)


def test_positional_embedding_formula() -> None:
    emb = PositionalEmbedding(8)(torch.tensor([0.0, 2.0]))  # (2, 8)
    freqs = torch.tensor([1.0, 10_000 ** (-1 / 3), 10_000 ** (-2 / 3), 1e-4])
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    torch.testing.assert_close(emb[1], torch.cat([(2 * freqs).sin(), (2 * freqs).cos()]))


def test_attention_options() -> None:
    base = PRESETS["tiny"]
    no_mid = dataclasses.replace(base, middle_attention=False)
    everywhere = dataclasses.replace(base, attention_levels=(0, 1))
    n_base, n_no_mid = n_params(RefDiffUNet(base)), n_params(RefDiffUNet(no_mid))
    width = base.model_channels * base.channel_mult[-1]
    assert n_base - n_no_mid == 2 * width + 3 * width * width + 3 * width + width * width + width
    net = RefDiffUNet(everywhere).eval()
    # 1 encoder block per level + the last decoder block of each level, plus the middle block.
    assert sum(isinstance(m, Attention) for m in net.modules()) == 2 + 2 + 1
    with torch.no_grad():
        assert net(*inputs(everywhere, 1, 16, 16)).shape == (1, 3, 16, 16)


def test_stem_unshuffle_keeps_full_resolution_output() -> None:
    cfg = dataclasses.replace(PRESETS["tiny"], stem_unshuffle=4)
    assert cfg.size_multiple == 8
    net = activate(RefDiffUNet(cfg)).eval()
    x_in, c_noise, lr_up, ref, mask = inputs(cfg, 1, 32, 32)
    with torch.no_grad():
        out = net(x_in, c_noise, lr_up, ref, mask)
        # A change to one output pixel's ref must reach that very pixel after the shuffle.
        ref2 = ref.clone()
        ref2[0, :, 5, 6] = -ref2[0, :, 5, 6]
        delta = (net(x_in, c_noise, lr_up, ref2, mask) - out).abs().sum(1)[0]
    assert out.shape == (1, 3, 32, 32)
    assert float(delta[5, 6]) > 0


# ----------------------------------------------------------------------------- config


@given(channels=st.integers(1, 2048))
def test_num_groups_divides_and_matches_edm(channels: int) -> None:
    groups = num_groups(channels)
    assert channels % groups == 0
    assert 1 <= groups <= 32
    edm = min(32, channels // 4)
    if edm >= 1 and channels % edm == 0:
        assert groups == edm


configs = st.builds(
    NetworkConfig,
    image_channels=st.integers(1, 8),
    mask_channels=st.integers(1, 8),
    model_channels=st.integers(2, 256).map(lambda v: 2 * v),
    channel_mult=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    num_blocks=st.integers(1, 4),
    embedding_mult=st.integers(1, 4),
    sft_hidden=st.integers(1, 256),
    dropout=st.floats(0.0, 0.9),
    middle_attention=st.booleans(),
    stem_unshuffle=st.integers(1, 4),
)


@settings(max_examples=50)
@given(cfg=configs)
def test_config_dict_round_trip(cfg: NetworkConfig) -> None:
    data = cfg.to_dict()
    assert isinstance(data["channel_mult"], list)
    assert NetworkConfig.from_dict(data) == cfg
    assert cfg.size_multiple == cfg.stem_unshuffle * 2 ** (len(cfg.channel_mult) - 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name: str) -> None:
    assert NetworkConfig.from_dict(PRESETS[name].to_dict()) == PRESETS[name]


def test_unknown_key_raises_config_error() -> None:
    data = PRESETS["tiny"].to_dict() | {"channels": 8}
    with pytest.raises(ConfigError, match="channels"):
        NetworkConfig.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_channels", 7),
        ("model_channels", "64"),
        ("channel_mult", ()),
        ("channel_mult", (1, 0)),
        ("num_blocks", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("attention_levels", (2,)),
        ("stem_unshuffle", 0),
        ("middle_attention", 1),
    ],
)
def test_invalid_values_raise_config_error(field: str, value: object) -> None:
    data = PRESETS["tiny"].to_dict() | {field: value}
    with pytest.raises(ConfigError, match=field):
        NetworkConfig.from_dict(data)
