"""Band routing: which band the engine generates, which goes through guided, which bicubic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from refdiff_cli.config import UpscaleOptions
from refdiff_cli.data.resample import downscale_bicubic, upsample
from refdiff_cli.errors import ConfigError, InputError
from refdiff_cli.geo import band_pairing, raster_info
from refdiff_cli.geo.band_names import band_name
from refdiff_cli.reference.guided import guided_transfer, reference_shift
from refdiff_cli.upscale.bands import BandRoutes, RoutedEngine, find_rgb, route_bands
from refdiff_cli.upscale.engines import BicubicEngine, EngineBatch, GuidedEngine

LR, REF = Path("lr.tif"), Path("ref.tif")
SCALE = 4


class ThreeBandModel(BicubicEngine):
    """Stands for the model: exactly three bands, uses the reference, adds a band marker."""

    name = "diffusion"
    uses_reference = True

    def __init__(self) -> None:
        super().__init__(SCALE)
        self.bands = 3
        self.seen: list[EngineBatch] = []

    def __call__(self, batch: EngineBatch) -> torch.Tensor:
        self.seen.append(batch)
        return super().__call__(batch) + 10 * batch.ref.mean()


def route(names, ref_of_lr, engine, rgb=None):  # type: ignore[no-untyped-def]
    return route_bands(
        names=names,
        lr_bands=tuple(range(1, len(names) + 1)),
        ref_of_lr=ref_of_lr,
        rgb=rgb,
        engine=engine,
        lr_path=LR,
        ref_path=REF,
    )


@pytest.mark.parametrize(
    ("colour", "description", "name"),
    [
        ("red", None, "red"),
        ("gray", "B04", "red"),
        ("undefined", " b3 ", "green"),
        ("gray", "B08", "nir"),
        ("gray", "SWIR", "swir"),
        ("gray", None, None),
        ("undefined", "", None),
    ],
)
def test_band_names_from_colour_or_description(
    colour: str, description: str | None, name: str | None
) -> None:
    assert band_name(colour, description) == name


def test_model_takes_red_green_blue_in_its_order_and_guides_the_rest() -> None:
    names = ("blue", "green", "red", "nir")  # a Sentinel-2 B02 B03 B04 B08 stack
    routes = route(names, (0, 1, 2, 3), ThreeBandModel())
    assert routes.core == (2, 1, 0) and routes.core_ref == (2, 1, 0)
    assert routes.transfer == ((3, 3),) and routes.bicubic == ()
    assert not routes.is_direct and routes.bands == 4


def test_a_band_the_reference_lacks_is_bicubic() -> None:
    routes = route(("red", "green", "blue", "nir"), (0, 1, 2, None), ThreeBandModel())
    assert routes.core == (0, 1, 2) and routes.transfer == () and routes.bicubic == (3,)
    paths = routes.paths(ThreeBandModel(), (1, 2, 3, 4), (1, 2, 3))
    assert [p["path"] for p in paths] == ["diffusion", "diffusion", "diffusion", "bicubic"]
    assert [p["ref_band"] for p in paths] == [1, 2, 3, None]


def test_rgb_option_overrides_names() -> None:
    routes = route((None, None, None, None), (0, 1, 2, 3), ThreeBandModel(), rgb=(4, 2, 1))
    assert routes.core == (3, 1, 0) and routes.transfer == ((2, 2),)


def test_three_unnamed_bands_go_to_the_model_as_they_come() -> None:
    routes = route((None, None, None), (0, 1, 2), ThreeBandModel())
    assert routes.is_direct and routes.core == (0, 1, 2)


def test_model_refuses_four_unnamed_bands_and_names_the_fix() -> None:
    with pytest.raises(InputError, match="none are marked red") as info:
        route((None, None, None, None), (0, 1, 2, 3), ThreeBandModel())
    assert "--rgb" in (info.value.hint or "")


def test_model_refuses_a_reference_without_one_of_its_bands() -> None:
    with pytest.raises(InputError, match="no band for LR band"):
        route(("red", "green", "blue"), (0, None, 1), ThreeBandModel())


@pytest.mark.parametrize("rgb", [(1, 1, 2), (1, 2)])
def test_rgb_option_needs_three_different_bands(rgb: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="three different"):
        UpscaleOptions(rgb=rgb)


def test_rgb_option_names_bands_that_are_selected() -> None:
    with pytest.raises(ConfigError, match="not among"):
        find_rgb((None,) * 4, (1, 2, 3, 4), (1, 2, 5), LR)


def test_bicubic_engine_takes_every_band_directly() -> None:
    routes = route(("blue", "green", "red", "nir"), (0, 1, None, 2), BicubicEngine(SCALE))
    assert routes.is_direct
    paths = routes.paths(BicubicEngine(SCALE), (1, 2, 3, 4), (1, 2, 4))
    assert {p["path"] for p in paths} == {"bicubic"} and {p["ref_band"] for p in paths} == {None}


def test_guided_engine_fits_rgb_together_or_every_band_with_a_reference() -> None:
    guided = GuidedEngine(SCALE)
    rgb = route(("blue", "green", "red", "nir"), (0, 1, 2, 3), guided)
    assert rgb.core == (2, 1, 0) and rgb.transfer == ((3, 3),)
    unnamed = route((None, None, None, None), (0, 1, None, 2), guided)
    assert unnamed.core == (0, 1, 3) and unnamed.core_ref == (0, 1, 2)
    assert unnamed.bicubic == (2,) and unnamed.transfer == ()


def _batch(bands: int, ref_bands: int, seed: int = 0) -> EngineBatch:
    generator = torch.Generator().manual_seed(seed)
    hr = torch.rand((1, bands, 64, 64), generator=generator) * 2 - 1
    ref = hr[:, :ref_bands].roll(1, dims=3)  # the same place, one output pixel off
    return EngineBatch(
        lr=downscale_bicubic(hr, SCALE),
        ref=ref,
        ref_valid=torch.ones((1, 1, 64, 64), dtype=torch.bool),
        mask=torch.zeros((1, 1, 64, 64)),
        origins=((0, 0),),
        seed=0,
    )


def test_routed_engine_puts_each_path_where_it_belongs() -> None:
    batch = _batch(5, 4)
    model = ThreeBandModel()
    routes = BandRoutes(core=(2, 1, 0), core_ref=(2, 1, 0), transfer=((3, 3),), bicubic=(4,))
    out = RoutedEngine(model, routes)(batch)
    assert out.shape == (1, 5, 64, 64)
    (seen,) = model.seen
    assert torch.equal(seen.lr, batch.lr[:, [2, 1, 0]])
    assert torch.equal(out[:, [2, 1, 0]], model(seen))
    shift = reference_shift(seen.lr, seen.ref, ref_valid=batch.ref_valid, scale=SCALE)
    nir = guided_transfer(
        batch.lr[:, 3:4],
        batch.ref[:, 3:4],
        mask=batch.mask,
        ref_valid=batch.ref_valid,
        scale=SCALE,
        config=model.guided_config,
        shift=shift,
    ).estimate
    torch.testing.assert_close(out[:, 3:4], nir)
    torch.testing.assert_close(out[:, 4:5], upsample(batch.lr[:, 4:5], SCALE, clamp=False))


def test_routed_transfer_fits_each_band_on_its_own() -> None:
    """Two extra bands in one call give what each gives alone (batching by band is exact)."""
    batch = _batch(5, 5, seed=1)
    both = RoutedEngine(
        GuidedEngine(SCALE),
        BandRoutes(core=(0, 1, 2), core_ref=(0, 1, 2), transfer=((3, 3), (4, 4))),
    )(batch)
    alone = RoutedEngine(
        GuidedEngine(SCALE),
        BandRoutes(core=(0, 1, 2), core_ref=(0, 1, 2), transfer=((4, 4),), bicubic=(3,)),
    )(batch)
    torch.testing.assert_close(both[:, 4], alone[:, 4])
    truth_gap = (both[:, 3] - upsample(batch.lr[:, 3:4], SCALE, clamp=False)[:, 0]).abs()
    assert float(truth_gap.mean()) > 1e-3  # the reference's detail was added


def test_routed_ref_strength_zero_leaves_extra_bands_bicubic() -> None:
    batch = _batch(4, 4)
    routes = BandRoutes(core=(0, 1, 2), core_ref=(0, 1, 2), transfer=((3, 3),))
    out = RoutedEngine(GuidedEngine(SCALE, ref_strength=0.0), routes, ref_strength=0.0)(batch)
    expected = upsample(batch.lr[:, 3:4], SCALE, clamp=False)
    np.testing.assert_allclose(out[:, 3:4].numpy(), expected.numpy(), atol=1e-6)


def _info(make_raster, name: str, bands: int, descriptions=None):  # type: ignore[no-untyped-def]
    import rasterio

    path = make_raster(name, np.zeros((bands, 8, 8), dtype=np.uint16))  # uint16: no default RGB
    if descriptions is not None:
        with rasterio.open(path, "r+") as dst:
            dst.descriptions = descriptions
    return raster_info.inspect_raster(path, name.removesuffix(".tif"))


def test_reference_bands_pair_by_option_with_zero_for_none(make_raster) -> None:  # type: ignore[no-untyped-def]
    lr, ref = _info(make_raster, "lr.tif", 4), _info(make_raster, "ref.tif", 3)
    assert band_pairing.pair_reference_bands(ref, lr, (1, 2, 3, 4), None, (3, 0, 1, 3)) == (
        (3, 1),
        (0, None, 1, 0),
    )
    with pytest.raises(ConfigError, match="one reference band per LR band"):
        band_pairing.pair_reference_bands(ref, lr, (1, 2, 3, 4), None, (1, 2, 3))
    with pytest.raises(ConfigError, match="do not exist"):
        band_pairing.pair_reference_bands(ref, lr, (1, 2, 3, 4), None, (1, 2, 3, 4))


def test_reference_bands_pair_by_name_then_in_order(make_raster) -> None:  # type: ignore[no-untyped-def]
    lr = _info(make_raster, "lr.tif", 4, ("B02", "B03", "B04", "B08"))
    named = _info(make_raster, "ref.tif", 3, ("red", "green", "blue"))
    assert band_pairing.pair_reference_bands(named, lr, (1, 2, 3, 4), None, None) == (
        (3, 2, 1),
        (0, 1, 2, None),
    )
    unnamed = _info(make_raster, "ref3.tif", 3)
    assert band_pairing.pair_reference_bands(unnamed, lr, (1, 2, 3, 4), None, None) == (
        (1, 2, 3),
        (0, 1, 2, None),
    )
    wider = _info(make_raster, "ref5.tif", 5)
    with pytest.raises(InputError, match="not named"):
        band_pairing.pair_reference_bands(wider, lr, (1, 2, 3, 4), None, None)
    other = _info(make_raster, "other.tif", 2, ("swir1", "swir2"))
    with pytest.raises(InputError, match="no band named like"):
        band_pairing.pair_reference_bands(other, lr, (1, 2, 3, 4), None, None)


def test_routed_engine_shows_the_inner_engines_other_settings() -> None:
    """Resume hashes, memory estimates and model cards read these through the wrapper."""
    inner = ThreeBandModel()
    inner.device = "cuda:1"  # type: ignore[attr-defined]
    routed = RoutedEngine(inner, BandRoutes(core=(0, 1, 2), core_ref=(0, 1, 2), bicubic=(3,)))
    assert routed.device == "cuda:1" and routed.bands == 4 and routed.name == "diffusion"


def test_evaluate_and_prepare_pair_reference_bands_like_upscale(make_raster) -> None:  # type: ignore[no-untyped-def]
    """One to one, by the same rules: named bands by name (a reference stored blue, green,
    red pairs red with red), unnamed ones in order; a band without its own is refused."""
    lr = _info(make_raster, "lr.tif", 3, ("red", "green", "blue"))
    reversed_ref = _info(make_raster, "ref.tif", 3, ("B02", "B03", "B04"))
    assert band_pairing.select_ref_bands(reversed_ref, lr, (1, 2, 3), None, None) == (3, 2, 1)
    assert band_pairing.pair_reference_bands(reversed_ref, lr, (1, 2, 3), None, None) == (
        (3, 2, 1),
        (0, 1, 2),
    )
    unnamed = _info(make_raster, "ref3.tif", 3)
    assert band_pairing.select_ref_bands(unnamed, lr, (1, 2, 3), None, None) == (1, 2, 3)
    assert band_pairing.select_ref_bands(reversed_ref, lr, (1, 2, 3), None, (1, 2, 3)) == (1, 2, 3)
    lacking = _info(make_raster, "nir.tif", 3, ("nir", "red", "green"))
    with pytest.raises(InputError, match=r"gives 3 band\(s\) but ref .* gives 2") as caught:
        band_pairing.select_ref_bands(lacking, lr, (1, 2, 3), None, None)
    assert "--ref-bidx 1,2,3" in str(caught.value.hint)
    with pytest.raises(ConfigError):
        band_pairing.select_ref_bands(unnamed, lr, (1, 2, 3), None, (1, 0, 3))
