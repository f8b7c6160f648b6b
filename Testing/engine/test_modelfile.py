"""Model bundle (*.mrtoct.safetensors): round trip, refusals with clear messages, catalog, cache, download."""
import copy
import json
import time
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from MRtoCTSynthesisLib import modelfile
from MRtoCTSynthesisLib.modelfile import Catalog, ModelFileError, load_model, save_model
from MRtoCTSynthesisLib.networks import ResnetGenerator

TINY = {"ngf": 4, "n_blocks": 1}


def make_metadata(**overrides):
    metadata = {
        "format": "mrtoct-model", "format_version": 1, "engine_version": "0.1.0",
        "name": "tiny", "description": "test model", "license": "CC0-1.0", "intended_use": "tests only",
        "networks": {"G_CT": {"architecture": "resnet_generator", "kwargs": dict(TINY)}},
        "preset": "yang2018", "loss_weights": {"cycle": 10.0, "structure": 5.0},
        "mr_window": [0.0, 3500.0], "ct_window": [-1000.0, 3500.0], "mr_normalization": {"method": "window"},
        "plane": "sagittal", "image_size": [32, 32], "pixel_spacing_mm": [1.0, 1.0],
        "training": {"mr_volumes": 2, "ct_volumes": 2, "iterations": 10}, "validation_metrics": {"mae": 123.4},
    }
    metadata.update(overrides)
    return metadata


def tiny_net(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ResnetGenerator(**{**TINY, **kwargs})


def write_raw(path, metadata, tensors):
    """A safetensors file written without save_model's checks (to build bad files)."""
    save_file(tensors, str(path), metadata=None if metadata is None else {"mrtoct": json.dumps(metadata)})
    return path


def prefixed(net, prefix="G_CT"):
    return {f"{prefix}.{k}": v.contiguous() for k, v in net.state_dict().items()}


@pytest.fixture
def saved(tmp_path):
    path = save_model(tmp_path / "tiny.mrtoct.safetensors", make_metadata(), {"G_CT": tiny_net()})
    return path


def test_round_trip(tmp_path):
    metadata = make_metadata(networks={"G_CT": {"architecture": "resnet_generator", "kwargs": dict(TINY)},
                                       "G_MR": {"architecture": "resnet_generator", "kwargs": dict(TINY)}})
    g_ct, g_mr = tiny_net(0), tiny_net(1)
    path = save_model(tmp_path / "m.mrtoct.safetensors", metadata, {"G_CT": g_ct, "G_MR": g_mr.state_dict()})
    bundle = load_model(path)
    assert bundle.metadata == metadata
    assert modelfile.read_metadata(path) == metadata
    for name, net in (("G_CT", g_ct), ("G_MR", g_mr)):
        original = net.state_dict()
        assert bundle.state_dicts[name].keys() == original.keys()
        assert all(torch.equal(bundle.state_dicts[name][k], v) for k, v in original.items())
    built = bundle.build("G_CT")
    assert not built.training
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(built(x), g_ct.eval()(x))
    with pytest.raises(ModelFileError, match="no network 'D_CT'"):
        bundle.build("D_CT")


def test_save_fills_format_fields_and_does_not_modify_metadata(tmp_path):
    metadata = make_metadata()
    for key in ("format", "format_version", "engine_version"):
        del metadata[key]
    before = copy.deepcopy(metadata)
    path = save_model(tmp_path / "m.mrtoct.safetensors", metadata, {"G_CT": tiny_net()})
    assert metadata == before
    loaded = load_model(path).metadata
    assert loaded["format"] == "mrtoct-model" and loaded["format_version"] == 1


def test_unknown_architecture(tmp_path):
    metadata = make_metadata(networks={"G_CT": {"architecture": "unet_9000", "kwargs": {}}})
    path = write_raw(tmp_path / "m.mrtoct.safetensors", metadata, prefixed(tiny_net()))
    known = r"unknown architecture 'unet_9000'.*patch_discriminator.*resnet_generator"
    with pytest.raises(ModelFileError, match=known):
        load_model(path)
    with pytest.raises(ModelFileError, match="unknown architecture"):
        save_model(tmp_path / "n.mrtoct.safetensors", metadata, {"G_CT": tiny_net()})
    assert not (tmp_path / "n.mrtoct.safetensors").exists()


@pytest.mark.parametrize("keep", [-100, 40, 5])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    with pytest.raises(ModelFileError, match="truncated or corrupt|not a safetensors"):
        load_model(saved)


def test_not_a_model_file(tmp_path):
    text = tmp_path / "notes.mrtoct.safetensors"
    text.write_text("hello, I am not a model", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a safetensors"):
        load_model(text)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.mrtoct.safetensors")
    plain = write_raw(tmp_path / "plain.safetensors", None, prefixed(tiny_net()))
    with pytest.raises(ModelFileError, match="without 'mrtoct' metadata"):
        load_model(plain)


class _Payload:
    """Unpickling this calls open(marker, 'w', encoding="utf-8"): proof that a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker), protocol=4)
    path = tmp_path / "evil.mrtoct.safetensors"
    path.write_bytes(payload)
    with pytest.raises(ModelFileError, match="pickle checkpoint.*refused"):
        load_model(path)
    assert not marker.exists()
    zipped = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(2), "evil": _Payload(marker)}, zipped)  # zip of pickles
    with pytest.raises(ModelFileError, match="pickle checkpoint.*refused.*weights_only=True"):
        load_model(zipped)
    assert not marker.exists()
    pickle.loads(payload).close()  # the payload is live: loading it the unsafe way creates the marker
    assert marker.exists()


@pytest.mark.parametrize("key", ["plane", "networks", "ct_window", "format_version", "license"])
def test_missing_metadata_key(tmp_path, key):
    metadata = make_metadata()
    del metadata[key]
    path = write_raw(tmp_path / "m.mrtoct.safetensors", metadata, prefixed(tiny_net()))
    with pytest.raises(ModelFileError, match=f"missing key '{key}'"):
        load_model(path)


@pytest.mark.parametrize("override, message", [
    ({"plane": "oblique"}, "'plane' must be one of"),
    ({"extra_planes": ["sagittal"]}, "'extra_planes' must be a list of planes other than"),
    ({"extra_planes": "axial"}, "'extra_planes' must be a list"),
    ({"ct_window": [3500, -1000]}, "'ct_window'.*lo < hi"),
    ({"image_size": [32.5, 32]}, "'image_size'.*integers"),
    ({"networks": {"G_MR": {"architecture": "resnet_generator", "kwargs": {}}}}, "must contain 'G_CT'"),
    ({"format": "something-else"}, "expected 'mrtoct-model'"),
])
def test_invalid_metadata_values(tmp_path, override, message):
    with pytest.raises(ModelFileError, match=message):
        save_model(tmp_path / "m.mrtoct.safetensors", make_metadata(**override), {"G_CT": tiny_net()})
    assert list(tmp_path.iterdir()) == []


def test_newer_format_version(tmp_path):
    path = write_raw(tmp_path / "m.mrtoct.safetensors", make_metadata(format_version=2), prefixed(tiny_net()))
    with pytest.raises(ModelFileError, match="format_version 2, newer than this engine supports"):
        load_model(path)


def test_weight_mismatch(tmp_path):
    wide = tiny_net(ngf=8)  # metadata says ngf=4
    with pytest.raises(ModelFileError, match=r"shape mismatch.*model\.1\.weight: file \(8, 1, 7, 7\)"):
        save_model(tmp_path / "m.mrtoct.safetensors", make_metadata(), {"G_CT": wide})
    path = write_raw(tmp_path / "m.mrtoct.safetensors", make_metadata(), prefixed(wide))
    with pytest.raises(ModelFileError, match="do not match architecture 'resnet_generator'.*shape mismatch"):
        load_model(path)
    tensors = prefixed(tiny_net())
    del tensors["G_CT.model.1.bias"]
    tensors["G_CT.extra"] = torch.zeros(1)
    path = write_raw(tmp_path / "k.mrtoct.safetensors", make_metadata(), tensors)
    with pytest.raises(ModelFileError, match=r"missing keys \['model\.1\.bias'\].*unexpected keys \['extra'\]"):
        load_model(path)
    with pytest.raises(ModelFileError, match="metadata declares"):
        save_model(tmp_path / "x.mrtoct.safetensors", make_metadata(), {"G_CT": tiny_net(), "G_MR": tiny_net()})


def test_atomic_save_leaves_no_temp_files(tmp_path, monkeypatch, saved):
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]
    original = saved.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(modelfile, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(saved, make_metadata(), {"G_CT": tiny_net(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]
    assert saved.read_bytes() == original  # the previous file is untouched


def write_catalog(folder, models):
    path = folder / "catalog.json"
    path.write_text(json.dumps({"version": 1, "models": models}), encoding="utf-8")
    return path


def entry_for(path, name="tiny", **extra):
    return {"name": name, "description": "d", "sha256": modelfile.sha256_of(path), "size_bytes": path.stat().st_size,
            "license": "CC0-1.0", "metrics": {"mae": 1.0}, **extra}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MRTOCT_MODEL_CACHE", str(folder))
    return folder


def test_catalog_resolve_path_name_unknown(tmp_path, saved, cache):
    catalog = Catalog(write_catalog(tmp_path, [entry_for(saved, file=saved.name)]))
    assert catalog.resolve(saved) == saved
    assert catalog.resolve(str(saved)) == saved
    assert catalog.resolve("tiny") == saved
    assert catalog.list_models()[0]["path"] == str(saved)
    with pytest.raises(ModelFileError, match=r"no model of that name; available models: \['tiny'\]"):
        catalog.resolve("huge")


def test_catalog_sha256_mismatch(tmp_path, saved, cache):
    entry = entry_for(saved, file=saved.name)
    expected = "0" * 64
    catalog = Catalog(write_catalog(tmp_path, [{**entry, "sha256": expected}]))
    with pytest.raises(ModelFileError, match=f"sha256 {entry['sha256']} but the catalog expects {expected}.*Delete"):
        catalog.resolve("tiny")


def test_default_catalog_is_valid():
    assert isinstance(Catalog().models, dict)


def test_install_from_file_into_cache(tmp_path, saved, cache):
    assert modelfile.model_cache_dir() == cache
    catalog = Catalog(write_catalog(tmp_path, [entry_for(saved, url="https://example.invalid/tiny")]))
    with pytest.raises(ModelFileError, match="not installed.*install_from_file"):
        catalog.resolve("tiny")
    other = save_model(tmp_path / "other.mrtoct.safetensors", make_metadata(), {"G_CT": tiny_net(5)})
    with pytest.raises(ModelFileError, match="catalog expects"):
        catalog.install_from_file("tiny", other)
    assert not cache.exists() or list(cache.iterdir()) == []
    installed = catalog.install_from_file("tiny", saved)
    assert installed == cache / "tiny.mrtoct.safetensors" and installed.read_bytes() == saved.read_bytes()
    assert catalog.resolve("tiny") == installed
    with pytest.raises(ModelFileError, match="unknown model 'nope'"):
        catalog.install_from_file("nope", saved)


def test_file_url_download(tmp_path, saved, cache):
    good = entry_for(saved, url=saved.as_uri())
    bad = {**entry_for(saved, name="corrupt", url=saved.as_uri()), "sha256": "f" * 64}
    catalog = Catalog(write_catalog(tmp_path, [good, bad]))
    calls = []
    path = catalog.download("tiny", progress=lambda done, total: calls.append((done, total)))
    assert path == cache / "tiny.mrtoct.safetensors" and load_model(path).metadata["name"] == "tiny"
    assert calls[-1] == (saved.stat().st_size, saved.stat().st_size)
    with pytest.raises(ModelFileError, match="catalog expects"):
        catalog.download("corrupt")
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.mrtoct.safetensors"]
    missing = Catalog(write_catalog(tmp_path, [entry_for(saved, url=(tmp_path / "gone").as_uri())]))
    with pytest.raises(ModelFileError, match="could not download"):
        missing.download("tiny")


def test_local_models_registry(tmp_path, saved, cache):
    assert modelfile.local_models() == {}
    name = modelfile.register_local_model(saved)
    assert name == "tiny" and modelfile.local_models() == {"tiny": saved.resolve()}
    catalog = Catalog(write_catalog(tmp_path, []))
    assert catalog.list_models() == [{"name": "tiny", "source": "local", "path": str(saved.resolve())}]
    assert catalog.resolve("tiny") == saved.resolve()
    os.remove(saved)
    with pytest.raises(ModelFileError, match="file is gone"):
        catalog.resolve("tiny")
    with pytest.raises(ModelFileError, match="not found"):
        modelfile.register_local_model(saved)


def test_bad_catalog(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"version": 1, "models": [{"name": "x", "description": "d", "license": "l",
                                                           "sha256": "abc", "size_bytes": 1, "file": "x"}]}), encoding="utf-8")
    with pytest.raises(ModelFileError, match="'sha256' must be 64"):
        Catalog(path)
    path.write_text(json.dumps({"version": 2, "models": []}), encoding="utf-8")
    with pytest.raises(ModelFileError, match="version 2"):
        Catalog(path)


@pytest.mark.parametrize("change, message", [
    ({"ct_window": [-1e30, 1e30]}, r"'ct_window' is .* outside the sane range \[-2000, 6000\] HU"),
    ({"image_size": [2, 2]}, r"'image_size' is \[2, 2\], outside the sane range \[16, 4096\] pixels"),
    ({"image_size": [200000, 200000]}, r"'image_size' .* outside the sane range"),
    ({"pixel_spacing_mm": [1e-4, 1e-4]}, r"'pixel_spacing_mm' .* outside the sane range \[0.05, 20\] mm"),
    ({"networks": {"G_CT": {"architecture": "resnet_generator", "kwargs": {**TINY, "ngf": -3}}}},
     r"'ngf' must be an integer in \[1, 512\], got -3"),
    ({"networks": {"G_CT": {"architecture": "resnet_generator", "kwargs": {**TINY, "ngf": "wide"}}}},
     r"'ngf' must be an integer .* got 'wide'"),
    ({"networks": {"G_CT": {"architecture": "resnet_generator", "kwargs": {**TINY, "n_blocks": 10 ** 9}}}},
     r"'n_blocks' must be an integer in \[0, 64\]"),
    ({"networks": {"G_CT": {"architecture": "unet_generator", "kwargs": {"ngf": 4, "norm": "layer"}}}},
     r"'norm' must be one of"),
])
def test_absurd_metadata_is_refused_with_one_clear_message(tmp_path, change, message):
    """A card damaged after saving (the weights' checksum does not cover the metadata) fails at load, by name."""
    path = write_raw(tmp_path / "bad.mrtoct.safetensors", make_metadata(**change), prefixed(tiny_net()))
    began = time.time()
    with pytest.raises(modelfile.ModelFileError, match=message):
        load_model(path)
    assert time.time() - began < 5                      # refused before anything is built or allocated


def test_a_weight_average_lies_between_its_models_and_refuses_what_cannot_be_averaged(tmp_path):
    a, b, other = (load_model(modelfile.save_untrained_model(tmp_path / f"{n}.mrtoct.safetensors", seed=seed, ngf=ngf))
                   for n, seed, ngf in (("a", 0, 4), ("b", 1, 4), ("other", 0, 8)))
    first = modelfile.average_weights([a, b], [1.0, 0.0])
    half = modelfile.average_weights([a, b], [0.5, 0.5])
    for key, value in a.state_dicts["G_CT"].items():
        assert torch.equal(first[key], value) and half[key].dtype == value.dtype
        if value.is_floating_point():
            assert torch.allclose(half[key], (value + b.state_dicts["G_CT"][key]) / 2)
    assert not all(torch.equal(half[k], v) for k, v in a.state_dicts["G_CT"].items())
    with pytest.raises(ModelFileError, match="same 'G_CT' architecture"):
        modelfile.average_weights([a, other], [0.5, 0.5])
    with pytest.raises(ModelFileError, match="sum to 1"):
        modelfile.average_weights([a, b], [0.5, 0.6])
    with pytest.raises(ModelFileError, match="two or more"):
        modelfile.average_weights([a], [1.0])
