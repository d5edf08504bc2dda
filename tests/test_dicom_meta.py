"""dicom_meta: non-identifying header attributes, identifiers only on request, and keyed hashing."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from test_decode import dicom_dataset

from medhash.data.dicom_meta import DicomMeta, parse_age_years, read_dicom_identifiers, read_dicom_meta
from medhash.data.keyed import keyed_hash
from medhash.errors import ImageDecodeError

PATIENT_ID = "SECRET-4711"  # set by test_decode.dicom_dataset


def header(**attrs) -> Dataset:
    """A header without pixel attributes, with identity values the meta must never carry."""
    ds = dicom_dataset(None, PatientBirthDate="19700101", StudyDate="20240102", AccessionNumber="ACC998877")
    for keyword in ("Modality", "Rows", "Columns", "PhotometricInterpretation"):
        del ds[keyword]
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write(tmp_path: Path, ds: Dataset, name: str = "IM0001") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_shared_samples(shared_data):
    folder = shared_data / "dicom-samples"
    metas = {p.name: read_dicom_meta(p) for p in sorted(folder.glob("test*.dcm"))}
    assert len(metas) == 6
    assert metas["test1.dcm"] == DicomMeta(
        modality="DX",
        view_position="PA",
        body_part_examined="CHEST",
        patient_sex="M",
        patient_age_years=81,  # stored as a bare "81"
        photometric_interpretation="MONOCHROME2",
        rows=1024,
        columns=1024,
        pixel_spacing=None,
    )
    # SOURCES.md: headers varied on purpose
    assert metas["test4.dcm"].body_part_examined == "RIBCAGE"
    assert metas["test5.dcm"].modality == "CT"
    assert metas["test6.dcm"].view_position == "XX"
    assert {m.view_position for m in metas.values()} == {"PA", "AP", "XX"}
    for path in sorted(folder.glob("test*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifying = {str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
        assert identifying.isdisjoint(str(v) for v in metas[path.name].as_dict().values())
        ids = read_dicom_identifiers(path)
        assert (ids.patient_id, ids.sop_instance_uid) == (str(ds.PatientID), str(ds.SOPInstanceUID))


def test_synthetic_header_fields_and_nothing_identifying(tmp_path):
    ds = header(Modality="DX ", ViewPosition="AP", PatientPosition="HFS", BodyPartExamined="CHEST",
                PatientSex="F", PatientAge="045Y", PhotometricInterpretation="MONOCHROME1",
                Rows=2048, Columns=1536, PixelSpacing=[0.139, "0.14"])
    meta = read_dicom_meta(write(tmp_path, ds))
    assert meta.as_dict() == {
        "modality": "DX",
        "view_position": "AP",
        "body_part_examined": "CHEST",
        "patient_sex": "F",
        "patient_age_years": 45,
        "photometric_interpretation": "MONOCHROME1",
        "rows": 2048,
        "columns": 1536,
        "pixel_spacing": (0.139, 0.14),
    }
    text = repr(meta.as_dict())
    for secret in (PATIENT_ID, "Doe", "1970", "2024", "ACC998877", str(ds.SOPInstanceUID)):
        assert secret not in text


def test_view_position_fallbacks(tmp_path):
    assert read_dicom_meta(write(tmp_path, header(PatientPosition="PA"), "a")).view_position == "PA"
    coded = Dataset()
    coded.CodeValue, coded.CodingSchemeDesignator, coded.CodeMeaning = "R-10214", "SRT", "postero-anterior"
    assert read_dicom_meta(write(tmp_path, header(ViewCodeSequence=[coded]), "b")).view_position == "postero-anterior"
    assert read_dicom_meta(write(tmp_path, header(ViewPosition="", PatientPosition=""), "c")).view_position == ""


def test_missing_attributes(tmp_path):
    meta = read_dicom_meta(write(tmp_path, header()))
    assert meta == DicomMeta("", "", "", "", None, "", None, None, None)


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", 45), ("006M", 0), ("018M", 1), ("010D", 0), ("003W", 0), ("104W", 1), ("730D", 1),
     ("089Y", 89), ("090Y", 90), ("095Y", 90), ("120Y", 90), ("81", 81), (" 045y ", 45), ("000Y", 0),
     (None, None), ("", None), ("Y", None), ("45 years", None), ("-5Y", None), ("4.5Y", None), ("1234Y", None)],
)
def test_age_parsing(value, years):
    assert parse_age_years(value) == years


def test_age_edge_cases_from_headers(tmp_path):
    assert read_dicom_meta(write(tmp_path, header(PatientAge="095Y"), "old")).patient_age_years == 90
    assert read_dicom_meta(write(tmp_path, header(PatientAge="018M"), "young")).patient_age_years == 1


def test_garbage_pixel_spacing_is_none(tmp_path):
    assert read_dicom_meta(write(tmp_path, header(PixelSpacing=["0.2"]), "one")).pixel_spacing is None
    assert read_dicom_meta(write(tmp_path, header(PixelSpacing=["0", "0.2"]), "zero")).pixel_spacing is None


def test_identifiers_only_on_request_and_keyed(tmp_path):
    ds = header()
    ids = read_dicom_identifiers(write(tmp_path, ds))
    assert ids.patient_id == PATIENT_ID and ids.sop_instance_uid == str(ds.SOPInstanceUID)
    secret = b"archive-owner-secret"
    digest = keyed_hash(ids.patient_id, secret)
    assert digest == hmac.new(secret, PATIENT_ID.encode(), hashlib.sha256).hexdigest()
    assert len(digest) == 64 and digest != hashlib.sha256(PATIENT_ID.encode()).hexdigest()
    assert keyed_hash(ids.patient_id, b"another-secret") != digest
    with pytest.raises(ValueError):
        keyed_hash(PATIENT_ID, b"")


def test_preamble_less_header_is_read(tmp_path):
    ds = header(Modality="CR")
    del ds.file_meta
    path = tmp_path / "1.2.840.113619.2.55"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert read_dicom_meta(path).modality == "CR"


def test_not_a_dicom_is_a_typed_error(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ImageDecodeError) as info:
        read_dicom_meta(path)
    assert info.value.kind == "not_an_image" and "root:x" not in str(info.value)
