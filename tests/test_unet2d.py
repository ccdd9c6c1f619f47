"""The shared 2D U-Net helpers (microcinema/models/unet2d.py): one loader and one config cleaner for the three
systems."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from microcinema.core.errors import MicroCinemaError
from microcinema.models.unet2d import UNET_SOURCES, clean_config, load_image_unet
from microcinema.testing import tiny_unet2d


def test_clean_config_drops_private_keys_and_lists_tuples():
    unet = tiny_unet2d()
    config = {**unet.config, "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1"}
    clean = clean_config(config)
    assert set(clean) == {k for k in unet.config if not k.startswith("_")} and "_class_name" not in clean
    assert isinstance(unet.config.block_out_channels, tuple)
    assert clean["block_out_channels"] == list(unet.config.block_out_channels)
    assert json.loads(json.dumps(clean)) == clean
    rebuilt = UNet2DConditionModel.from_config(clean)
    assert clean_config(rebuilt.config) == clean


def test_loads_an_instance_a_unet_folder_a_pipeline_folder_and_embedded(tmp_path):
    unet = tiny_unet2d()
    assert load_image_unet(unet) is unet
    unet.save_pretrained(tmp_path / "unet_only")
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    for source in (tmp_path / "unet_only", str(tmp_path / "pipe")):
        loaded = load_image_unet(source)
        assert clean_config(loaded.config) == clean_config(unet.config)
        assert torch.equal(loaded.conv_in.weight, unet.conv_in.weight)
    assert load_image_unet(tmp_path / "pipe", torch_dtype=torch.float16).dtype == torch.float16
    embedded = load_image_unet("embedded")
    assert embedded.config.cross_attention_dim == 384  # the embedded MiniLM text-to-image U-Net


def test_bad_input_is_one_line_naming_the_path_and_what_is_allowed(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MicroCinemaError) as info:
        load_image_unet(missing)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and message.endswith(f"(allowed: {UNET_SOURCES})")
    # a config diffusers rejects with a ValueError (used to escape from inflate_unet)
    tiny_unet2d().save_pretrained(tmp_path / "broken")
    config = json.loads((tmp_path / "broken" / "config.json").read_text())
    config["down_block_types"] = config["down_block_types"][:1]
    (tmp_path / "broken" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MicroCinemaError,
                       match=r"cannot load a 2D U-Net from '.*broken': .*allowed: 'embedded'") as info:
        load_image_unet(tmp_path / "broken")
    assert "\n" not in str(info.value)
    with pytest.raises(MicroCinemaError, match="cannot load a 2D U-Net from a int; allowed: a UNet2DConditionModel"):
        load_image_unet(3)  # type: ignore[arg-type]
