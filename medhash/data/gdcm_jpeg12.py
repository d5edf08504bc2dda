"""A pydicom decoder plugin: JPEG Extended (process 2 & 4) with 12-bit samples, through GDCM.

pydicom's own GDCM plugin refuses 12-bit JPEG Extended (early GDCM builds decoded it wrongly), and
the only other pydicom plugin that decodes it, pylibjpeg-libjpeg, is GPLv3 - not a dependency an
Apache-2.0 package takes. python-gdcm 3.2 decodes these streams exactly (checked against the
uncompressed original in tests/test_decode_syntaxes.py), so this plugin hands the frame to GDCM the
way pydicom's GDCM plugin does for the other JPEG syntaxes. It is added after pydicom's plugins:
8-bit JPEG Extended still goes to them, and an installed pylibjpeg-libjpeg is still tried first.
GDCM may print "Unsupported JPEG data precision 12" to the process's stderr while it switches to its
12-bit codec; the pixels are unaffected.

`register()` adds it once per process (pydicom's plugin registry is global and not thread-safe).
"""

from __future__ import annotations

import threading

from pydicom import uid
from pydicom.pixels import get_decoder

try:
    import gdcm
except ImportError:  # pragma: no cover - gdcm is a dependency; without it the plugin is unavailable
    gdcm = None

__all__ = ["PLUGIN_LABEL", "register"]

PLUGIN_LABEL = "medhash-gdcm-12bit"

# Names pydicom's plugin interface requires (pydicom.pixels.common.CoderBase.add_plugin).
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}

_register_lock = threading.Lock()
_registered = False


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder (idempotent, thread-safe)."""
    global _registered
    with _register_lock:
        if not _registered:
            get_decoder(uid.JPEGExtended12Bit).add_plugin(PLUGIN_LABEL, (__name__, "decode_frame"))
            _registered = True


def is_available(transfer_syntax: str) -> bool:
    return gdcm is not None and transfer_syntax in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner) -> bytes:
    """pydicom plugin entry: one encoded frame in, the frame's little-endian pixel bytes out."""
    if runner.bits_stored <= 8:
        raise NotImplementedError("8-bit JPEG Extended is left to pydicom's own plugins")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    photometric = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(photometric))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            runner.samples_per_pixel,
            runner.bits_allocated,
            runner.bits_stored,
            runner.bits_stored - 1,
            runner.pixel_representation,
        )
    )
    # GDCM hands the buffer back as a str; surrogateescape recovers the raw bytes (as pydicom does).
    return image.GetBuffer().encode("utf-8", "surrogateescape")
