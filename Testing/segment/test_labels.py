"""Label tables: the built-in head and pelvis tables, validation, terminology, and the phantom-label mapping."""
import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MRtoCTSegmentLib.labels import LabelTable, LabelTableError, load_label_table, read_source_names, table_path
from MRtoCTSynthesisLib.phantom import HEAD_LABELS, PELVIS_LABELS, make_phantom


@pytest.mark.parametrize("name, source", [("pelvis", PELVIS_LABELS), ("head", HEAD_LABELS)])
def test_builtin_tables_are_complete(name, source):
    table = load_label_table(name)
    assert table.name == name and table.n_classes == len(table.structures) + 1
    assert [s.value for s in table.structures] == list(range(1, table.n_classes))
    for s in table.structures:
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in s.color)
        assert all(0 <= c <= 1 for c in s.color_float)
        assert s.type.scheme == "SCT" and s.type.value.isdigit() and s.type.meaning
        assert s.category.value in ("91723000", "85756007", "91720002")  # DICOM CID 7150
        assert s.code_verified, f"{s.name}: code source not recorded"
    mapping = table.source_mapping
    assert set(source.values()) <= set(mapping["direct"]) | set(mapping["nearest"]) | set(mapping["ignore"])
    assert len({tuple(s.color) for s in table.structures}) == len(table.structures)  # distinguishable


def test_pelvis_table_has_the_papers_structures_with_their_codes():
    table = load_label_table("pelvis")
    codes = {s.name: s.type.value for s in table.structures}
    assert codes["femur"] == "71341001" and codes["gluteus_medius"] == "78333006"
    assert codes["gluteus_minimus"] == "75297007" and codes["urinary_bladder"] == "89837001"
    assert {"pelvis", "iliopsoas", "muscle", "lumbosacral_spine"} <= set(codes)


def test_terminology_entry_and_color_table(tmp_path):
    table = load_label_table("pelvis")
    femur = table.by_name("femur")
    assert femur.terminology_entry() == ("Segmentation category and type - DICOM master list~SCT^91723000^Anatomical "
                                         "Structure~SCT^71341001^Femur~^^~Anatomic codes - DICOM master list~^^~^^")
    lines = table.write_color_table(tmp_path / "pelvis.ctbl").read_text(encoding="utf-8").splitlines()
    assert "2 femur 250 180 90 255" in lines and lines[1].startswith("0 background")


def test_round_trip_and_lookup(tmp_path):
    table = load_label_table("head")
    path = table.save(tmp_path / "t.json")
    again = load_label_table(path)
    assert again.to_json() == table.to_json()
    assert load_label_table(json.loads(path.read_text(encoding="utf-8"))).names == table.names
    assert table.by_value(5).name == "brain" and table.by_name("skull").value == 4
    with pytest.raises(LabelTableError, match="no structure"):
        table.by_name("liver")
    with pytest.raises(LabelTableError, match="built-in tables"):
        table_path("kidney")
    assert table_path("head").name == "head.json"


def _broken(change):
    record = copy.deepcopy(load_label_table("pelvis").to_json())
    change(record)
    return record


@pytest.mark.parametrize("change, message", [
    (lambda r: r["structures"].pop(3), "without gaps"),
    (lambda r: r["structures"][1].update(name="pelvis"), "unique"),
    (lambda r: r["structures"][0].update(color=[0.9, 0.8, 0.5]), "0-255"),
    (lambda r: r["structures"][0].update(name="Pelvis Bone"), "identifier"),
    (lambda r: r["structures"][0]["type"].pop("CodeValue"), "CodeValue"),
    (lambda r: r["source_mapping"]["direct"].update(fat="liver"), "unknown structures"),
    (lambda r: r["source_mapping"]["nearest"].update(cortical_bone=["tooth"]), "mapped directly"),
    (lambda r: r.update(color_scale="0-1"), "0-255"),
])
def test_invalid_tables_are_refused(change, message):
    with pytest.raises(LabelTableError, match=message):
        LabelTable.from_json(_broken(change))


def test_nearest_marrow_takes_the_cortex_by_hand():
    # row: [A-marrow, cortex, cortex, cortex, cortex, B-marrow]; cortex splits at the midpoint
    names = {1: "pelvis_marrow", 2: "femur_marrow", 3: "cortical_bone", 4: "fat"}
    labels = np.array([[[1, 3, 3, 3, 3, 2, 0, 4]]])
    mapped = load_label_table("pelvis").map_source_labels(labels, names, (1, 1, 1))
    pelvis, femur, fat = 1, 2, 11
    np.testing.assert_array_equal(mapped[0, 0], [pelvis, pelvis, pelvis, femur, femur, femur, 0, fat])
    # anisotropic spacing changes which marrow is nearest
    labels = np.array([[[1, 3, 3]], [[0, 0, 2]]])
    mapped = load_label_table("pelvis").map_source_labels(labels, names, (0.5, 1, 1))
    assert mapped[0, 0, 2] == femur


def test_phantom_pelvis_maps_onto_the_table():
    phantom = make_phantom("pelvis", 3, (40, 32, 32), (10.0, 9.0, 8.0))
    table = load_label_table("pelvis")
    source = sitk.GetArrayFromImage(phantom.labels)
    mapped_image = table.map_image(phantom.labels, phantom.label_names)
    mapped = sitk.GetArrayFromImage(mapped_image)
    assert mapped_image.GetSize() == phantom.labels.GetSize() and mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped > 0, source > 0)           # no voxel lost or invented
    table.check_label_values(mapped)
    ids = {name: value for value, name in phantom.label_names.items()}
    femur, pelvis, spine = (table.by_name(n).value for n in ("femur", "pelvis", "lumbosacral_spine"))
    assert (mapped[source == ids["femur_marrow"]] == femur).all()
    cortex = mapped[source == ids["cortical_bone"]]
    assert set(np.unique(cortex)) <= {femur, pelvis, spine} and (cortex == femur).any() and (cortex == pelvis).any()
    assert (mapped[source == ids["bowel_gas"]] == table.by_name("bowel").value).all()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(phantom.labels), source)  # input untouched


def test_unmapped_or_undeclared_source_labels_are_refused(tmp_path):
    table = load_label_table("pelvis")
    with pytest.raises(LabelTableError, match="not mapped"):
        table.map_source_labels(np.ones((2, 2, 2), int), {1: "liver"})
    with pytest.raises(LabelTableError, match="do not list"):
        table.map_source_labels(np.full((2, 2, 2), 7), {1: "fat"})
    with pytest.raises(LabelTableError, match="does not define"):
        table.check_label_values(np.array([0, 13]))
    (tmp_path / "labels.json").write_text(json.dumps({"1": "fat", "2": "skin"}), encoding="utf-8")
    assert read_source_names(tmp_path / "labels.json") == {1: "fat", 2: "skin"}
