"""Reason codes for every file an ingest does not use (the quarantine report's vocabulary)."""

from __future__ import annotations

NOT_DICOM = "not_dicom"
UNREADABLE_HEADER = "unreadable_header"
NOT_AN_IMAGE = "not_an_image"
WRONG_MODALITY = "wrong_modality"
WRONG_BODY_PART = "wrong_body_part"
WRONG_VIEW = "wrong_view"
NO_PIXEL_DATA = "no_pixel_data"
MULTI_FRAME = "multi_frame"
COLOUR = "colour"
UNSUPPORTED_COMPRESSION = "unsupported_compression"
CORRUPT_PIXEL_DATA = "corrupt_pixel_data"
TRUNCATED = "truncated"
NO_LABEL = "no_label"
DUPLICATE = "duplicate"

DESCRIPTIONS = {
    NOT_DICOM: "no DICOM preamble and 'DICM' marker at byte 128",
    UNREADABLE_HEADER: "the header cannot be parsed (malformed elements or meta information)",
    NOT_AN_IMAGE: "a DICOM object that is not an image (no rows/columns: SR, RT plan, waveform)",
    WRONG_MODALITY: "modality not allowed by the site policy (data.modalities)",
    WRONG_BODY_PART: "BodyPartExamined present and not allowed (data.body_parts)",
    WRONG_VIEW: "ViewPosition present and not allowed (data.views)",
    NO_PIXEL_DATA: "image header without pixel data",
    MULTI_FRAME: "more than one frame",
    COLOUR: "colour or palette pixels where grayscale is expected",
    UNSUPPORTED_COMPRESSION: "transfer syntax no installed decoder handles",
    CORRUPT_PIXEL_DATA: "compressed pixel data that fails to decode",
    TRUNCATED: "the file ends before its pixel data does",
    NO_LABEL: "no row for this image in the label table",
    DUPLICATE: "the same content as an accepted file (another path)",
}
