"""Report text: the one place that reads sections and sentences out of a radiology
report, and ConVIRT's text transform (one sentence of each report, drawn uniformly).

- :func:`report_sections` - every heading of a report with the text up to the next.
  Headings are found at the start of a line or inline (Open-I and Indiana reports are
  one-line ``"FINDINGS: ... IMPRESSION: ..."`` strings), in any case, with a colon or
  without one, in the variants MIMIC-CXR and Open-I use (FINDING(S), IMPRESSION(S),
  CONCLUSION, FINDINGS AND IMPRESSION, the usual misspellings, INDICATION, HISTORY,
  COMPARISON, ...). Any other ALL-CAPS label followed by a colon ends a section too;
  ALL-CAPS text that ends with a known name ("... SVC IMPRESSION:", "EXAMINATION:
  CHEST PA AND LAT INDICATION:") is split there, the text going to the section before.
- :func:`extract_sections` - the FINDINGS and IMPRESSION text of a report.
- :func:`split_sentences` - the sentences of a report, headings removed.
- :func:`sample_sentence` / :func:`sample_sentences` - the paper's transform, what the
  Trainer feeds the text tower: one sentence per report, from the FINDINGS and
  IMPRESSION sections when the report has them, drawn by the core's counter-based
  generator from (seed, step, index), so the draw does not depend on batch order,
  workers or threads.
- :func:`impressions` - each report's IMPRESSION section, for pairing images with the
  radiologist's conclusions only.
- :func:`format_sections` - ``"FINDINGS: ...\\nIMPRESSION: ..."`` from sections.

Nothing falls back silently: :func:`impressions` warns with the number of reports that
had no IMPRESSION section, and MIMICCXRDataset with the number whose sections had to be
guessed from the last paragraph.
"""

import math
import re
import warnings

import numpy as np

from ._core import random_uniform

__all__ = [
    "extract_sections",
    "format_sections",
    "impressions",
    "report_sections",
    "sample_sentence",
    "sample_sentences",
    "split_sentences",
]

# ---- headings -----------------------------------------------------------------------

# Heading names, lower case, as MIMIC-CXR's section script and Open-I's XML write them
# (with the misspellings that occur in MIMIC-CXR more than once).
_FINDINGS = {
    "finding",
    "findings",
    "findngs",
    "findnings",
    "finidngs",
    "findgings",
    "findindgs",
    "findins",
}
_IMPRESSION = {
    "impression",
    "impressions",
    "conclusion",
    "conclusions",
    "summary",
    "opinion",
    "impresson",
    "impession",
    "impresion",
    "imprssion",
    "imoression",
    "imprression",
    "impressoin",
    "imperssion",
}
_BOTH = {
    "findings and impression",
    "findings and impressions",
    "impression and findings",
    "findings/impression",
    "impression/findings",
    "findings & impression",
    "findings impression",
}
_OTHER = {
    "examination",
    "exam",
    "type of examination",
    "indication",
    "indications",
    "clinical indication",
    "reason for exam",
    "reason for examination",
    "history",
    "clinical history",
    "patient history",
    "clinical information",
    "technique",
    "comparison",
    "comparisons",
    "comparison exam",
    "comparison film",
    "reference exam",
    "comparision",
    "comparsion",
    "recommendation",
    "recommendations",
    "notification",
    "wet read",
    "wetread",
    "final report",
    "addendum",
    "procedure",
    "comment",
    "comments",
}
_KINDS = {
    **{name: "other" for name in _OTHER},
    **{name: "findings" for name in _FINDINGS},
    **{name: "impression" for name in _IMPRESSION},
    **{name: "both" for name in _BOTH},
}
_SAMPLED_KINDS = ("findings", "impression", "both")


def _trie_pattern(names):
    """One regex alternation of names (lower case) as a trie, so that a position that
    starts no name fails at its first letter; a space stands for white space and a
    slash may have white space around it."""
    trie = {}
    for name in names:
        node = trie
        for char in name:
            node = node.setdefault(char, {})
        node[""] = {}

    def pattern(node):
        branches = []
        for char, child in sorted(node.items()):
            if char == "":
                continue
            atom = {" ": r"\s+", "/": r"\s*/\s*"}.get(char, re.escape(char))
            branches.append(atom + pattern(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a name may end here
            return "(?:" + body + ")?"
        return body

    return pattern(trie)


# A candidate heading, at the start of the text or after white space or sentence
# punctuation: ALL-CAPS words followed by a colon, or a known name in any case (longest
# first) followed by a colon, " - ", the end of its line or white space. Which
# candidates are headings is decided in _headings().
_HEADING = re.compile(
    r"(?:^|(?<=[\s.;!?]))"
    r"(?:(?P<caps>[A-Z][A-Z /&()-]{2,}[A-Z)])[ \t]*:"
    r"|(?P<known>(?i:" + _trie_pattern(_KINDS) + r")(?:\([sS]\))?)"
    r"(?P<tail>[ \t]*:|[ \t]+-[ \t]+|[ \t]*-?[ \t]*(?=\n|$)|(?=\s)))",
    re.MULTILINE,
)
_SAMPLED_NAMES = sorted(
    (n for n, kind in _KINDS.items() if kind != "other"), key=len, reverse=True
)
_KNOWN_NAMES = sorted(_KINDS, key=len, reverse=True)


def _normalise(name):
    name = re.sub(r"\s+", " ", name.strip().lower()).replace("(s)", "s")
    return re.sub(r"\s*/\s*", "/", name)


def _kind(heading):
    """'findings', 'impression', 'both' (findings and impression together), 'other' or
    None (the text before the first heading). A label that is not a known name takes
    the kind of the findings or impression name it starts or ends with
    ('IMPRESSION AND RECOMMENDATIONS', 'CHEST IMPRESSION')."""
    if heading is None:
        return None
    name = _normalise(heading)
    if name in _KINDS:
        return _KINDS[name]
    for known in _SAMPLED_NAMES:
        if name.startswith(known + " ") or name.endswith(" " + known):
            return _KINDS[known]
    return "other"


def _known_suffix(label):
    """Where, in ALL-CAPS words that are not themselves a heading name, the longest
    known heading name that ends them starts ("SVC IMPRESSION", "CHEST PA AND LAT
    INDICATION"), or None."""
    if _normalise(label) in _KINDS:
        return None
    name = label.lower()
    for known in _KNOWN_NAMES:
        if name.endswith(" " + known):
            return len(label) - len(known)
    return None


def _headings(text):
    """[(start, end, heading as written)] of the headings of text, in order."""
    found = []
    shouting = None  # whether the whole report is in capitals, when it matters
    for match in _HEADING.finditer(text):
        start, end = match.start(), match.end()
        line_start = text.rfind("\n", 0, start) + 1
        at_line_start = not text[line_start:start].strip()
        previous = start - 1
        while previous >= 0 and text[previous] in " \t":
            previous -= 1
        at_sentence_start = previous < 0 or text[previous] in "\n.!?;:"
        after_colon = previous >= 0 and text[previous] == ":"
        if match.group("caps") is not None:
            name, ok = match.group("caps"), True
            split = _known_suffix(name)
            if split is not None and _normalise(name[:split]) in _KINDS:
                # two headings in a row: "FINAL REPORT EXAMINATION: ..."
                found.append((start, start + split, name[:split].strip()))
                start, name = start + split, name[split:]
            elif split is not None and (not at_sentence_start or after_colon):
                # the end of a sentence or of a heading's ALL-CAPS text, then a heading:
                # "... in the left sided SVC IMPRESSION: ...",
                # "EXAMINATION: CHEST PA AND LAT INDICATION: ..."
                start, name = start + split, name[split:]
        else:
            name, tail = match.group("known"), match.group("tail")
            eol = end == len(text) or text[end] == "\n"
            if ":" in tail:
                ok = name.isupper() or at_sentence_start
            elif "-" in tail or eol:  # "Impression - ...", or alone on its line
                ok = at_line_start
            else:  # no colon, inline: ALL CAPS at the start of a sentence, before
                # text that is not (in a report that is not all capitals)
                ok = name.isupper() and at_sentence_start
                if ok and not any(c.islower() for c in text[end : end + 40]):
                    if shouting is None:
                        shouting = text.isupper()
                    ok = shouting
        if ok:
            found.append((start, end, re.sub(r"\s+", " ", name.strip())))
    return found


def report_sections(report):
    """[(heading or None, text)] in order: the text before the first heading (when there
    is any), then each heading as written ('FINDINGS', 'Impression', ...) with the text
    up to the next heading, stripped."""
    report = _as_text(report)
    sections = []
    position, heading = 0, None
    for start, end, name in _headings(report):
        sections.append((heading, report[position:start].strip()))
        heading, position = name, end
    sections.append((heading, report[position:].strip()))
    return [(h, body) for h, body in sections if h is not None or body]


def _as_text(report):
    if report is None or (isinstance(report, float) and math.isnan(report)):
        return ""
    return str(report).replace("\r\n", "\n").replace("\r", "\n")


def _collapse(text):
    return re.sub(r"\s+", " ", text).strip()


def _sections(text):
    """(extract_sections(text), whether the report had text but neither a FINDINGS nor
    an IMPRESSION section, so that its last paragraph was taken)."""
    text = _as_text(text)
    found = {"findings": [], "impression": []}
    for heading, body in report_sections(text):
        kind = _kind(heading)
        body = _collapse(body)
        if body and kind in ("findings", "both"):
            found["findings"].append(body)
        elif body and kind == "impression":
            found["impression"].append(body)
    result = {key: " ".join(parts) for key, parts in found.items()}
    if result["findings"] or result["impression"]:
        return result, False
    result["impression"] = _last_paragraph(text)
    return result, bool(result["impression"])


def _last_paragraph(text):
    headings = _headings(text)
    for start, end, _ in reversed(headings):
        text = text[:start] + " " * (end - start) + text[end:]
    paragraphs = [_collapse(p) for p in re.split(r"\n[ \t]*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    return paragraphs[-1] if paragraphs else ""


def extract_sections(text):
    """The FINDINGS and IMPRESSION sections of a radiology report.

    Headings are those of :func:`report_sections`: FINDING(S) (and misspellings),
    IMPRESSION(S), CONCLUSION(S), SUMMARY, OPINION, and the combined "FINDINGS AND
    IMPRESSION" (its text goes to ``findings``), at the start of a line or inline, in
    any case, followed by a colon (or " - ", or nothing in ALL CAPS). A section ends at
    the next heading (INDICATION, COMPARISON, ..., or any ALL-CAPS words followed by a
    colon). Whitespace inside a section is collapsed; several sections of one kind are
    joined.

    When a report has neither section, its last paragraph (text after the last blank
    line, headings removed) is taken as the impression, as MIMIC-CXR's own section
    script does for reports written without headings. Callers that read many reports
    count these (MIMICCXRDataset warns with the number).

    Returns ``{"findings": str, "impression": str}``; a missing section is ``""``.
    """
    return _sections(text)[0]


def impressions(reports):
    """Each report's IMPRESSION section, or its whole text when it has none: the text to
    pair with an image when only the radiologist's conclusions should be sampled. A
    warning says how many reports had no IMPRESSION section."""
    reports = list(reports)
    out, missing = [], 0
    for report in reports:
        impression = ""
        if _as_text(report):
            impression = " ".join(
                _collapse(body)
                for heading, body in report_sections(report)
                if _kind(heading) == "impression" and body.strip()
            )
        missing += not impression
        out.append(impression or report)
    if missing:
        warnings.warn(
            f"{missing} of {len(reports)} reports have no IMPRESSION section; "
            "their whole text is used instead",
            stacklevel=2,
        )
    return out


def format_sections(sections):
    """``"FINDINGS: ...\\nIMPRESSION: ..."`` from a dict like the one
    :func:`extract_sections` returns; empty sections are left out."""
    lines = []
    for key in ("findings", "impression"):
        body = (sections.get(key) or "").strip()
        if body:
            lines.append(f"{key.upper()}: {body}")
    return "\n".join(lines)


# ---- sentences ----------------------------------------------------------------------

# Candidate sentence ends: . ! or ? followed by white space.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = {
    "dr",
    "mr",
    "mrs",
    "ms",
    "vs",
    "e.g",
    "i.e",
    "approx",
    "etc",
    "cf",
    "fig",
    "no",
    "st",
    "jr",
    "sr",
    "mt",
    "pt",
    "ca",
}
_LIST_MARKER = re.compile(r"^\(?\d{1,2}[.)]\s*")


def _sentences(text):
    """The sentences of a section's text: split at paragraph breaks and after '.', '!'
    or '?' followed by white space, except after common abbreviations and bare list
    numbers; list markers stripped, pieces without a letter or digit dropped."""
    out = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        paragraph = " ".join(paragraph.split())
        pieces = _BOUNDARY.split(paragraph) if paragraph else []
        sentences, carry = [], ""
        for piece in pieces:
            piece = carry + piece
            carry = ""
            last_word = piece.rsplit(" ", 1)[-1].rstrip(".").lower()
            if piece.endswith(".") and (
                last_word in _ABBREVIATIONS or _LIST_MARKER.fullmatch(piece)
            ):
                carry = piece + " "
                continue
            sentences.append(piece)
        if carry.strip():
            sentences.append(carry.strip())
        for sentence in sentences:
            sentence = _LIST_MARKER.sub("", sentence).strip()
            if any(ch.isalnum() for ch in sentence):
                out.append(sentence)
    return out


def split_sentences(text):
    """The sentences of report text, section headings removed: what ConVIRT samples
    from (see :func:`sample_sentence`).

    Splits at headings (:func:`report_sections`), at paragraph breaks, and after '.',
    '!' or '?' followed by white space, except after common abbreviations (Dr., e.g.,
    vs., ...) and bare list numbers ('1.'); list markers are stripped and pieces without
    a letter or digit dropped. Decimals ('1.5 cm') are not split. Lines are joined
    within a paragraph (reports are often wrapped mid-sentence).

    ``"FINDINGS: Heart size is normal. No effusion.\\nIMPRESSION: 1. Normal."`` gives
    ``["Heart size is normal.", "No effusion.", "Normal."]``; an empty report ``[]``.
    """
    return [s for _, body in report_sections(text) for s in _sentences(body)]


# ---- the text transform: one sentence per report --------------------------------------

_MASK64 = (1 << 64) - 1
# "SENTENCE": XORed into the seed so that these draws are apart from the augmentation's
# and the initialisers' (the convention of csrc/augment.c).
_SENTENCE_TAG = 0x53454E54454E4345


def candidate_sentences(report):
    """The sentences :func:`sample_sentence` draws from: those of the FINDINGS and
    IMPRESSION sections when the report has them (with text), else those of the whole
    report."""
    sections = report_sections(report)
    sentences = [
        s
        for heading, body in sections
        if _kind(heading) in _SAMPLED_KINDS
        for s in _sentences(body)
    ]
    if sentences:
        return sentences
    return [s for _, body in sections for s in _sentences(body)]


def _is_missing(report):
    return report is None or (isinstance(report, float) and math.isnan(report))


def sample_sentence(report, seed, step, index, on_empty="raise"):
    """One sentence of ``report``, drawn uniformly.

    Sentences come from the FINDINGS and IMPRESSION sections when the report has them
    (with text), else from the whole report (:func:`candidate_sentences`). The draw is
    the core's counter-based uniform ``convirt._core.random_uniform(seed ^ tag, step,
    index)``, with ``index`` the report's identity in the data set (not its place in a
    batch), so it is the same whatever the batch order or worker.
    A report with no sentence (empty, None/NaN, only headers) raises ValueError when
    ``on_empty='raise'`` (default), or gives ``''`` when ``on_empty='blank'`` (which
    tokenizes to [CLS] [SEP]).
    """
    if on_empty not in ("raise", "blank"):
        raise ValueError(f"on_empty must be 'raise' or 'blank', got {on_empty!r}")
    for name, value in (("seed", seed), ("step", step), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if _is_missing(report):
        sentences = []
    elif not isinstance(report, str):
        raise TypeError(f"report {index} must be a str, got {type(report).__name__}")
    else:
        sentences = candidate_sentences(report)
    if not sentences:
        if on_empty == "blank":
            return ""
        raise ValueError(
            f"report {index} has no sentence to sample (empty, missing or only "
            "section headers); clean the data or pass on_empty='blank'"
        )
    u = random_uniform(
        (int(seed) ^ _SENTENCE_TAG) & _MASK64, int(step) & _MASK64, int(index) & _MASK64
    )
    return sentences[min(int(u * len(sentences)), len(sentences) - 1)]


def sample_sentences(reports, seed, step, indices=None, on_empty="raise"):
    """ConVIRT's text transform over a batch: one sentence per report (see
    :func:`sample_sentence`). ``indices`` are the reports' data-set indices (default
    0..N-1); give them so that a report's draw does not depend on its batch position.
    Returns a list of N strings, ready for :func:`convirt.text.tokenize`."""
    if isinstance(reports, str):
        raise TypeError("reports must be a list of strings, got a single str")
    reports = list(reports)
    if indices is None:
        indices = range(len(reports))
    indices = list(indices)
    if len(indices) != len(reports):
        raise ValueError(f"{len(reports)} reports but {len(indices)} indices")
    return [
        sample_sentence(report, seed, step, index, on_empty=on_empty)
        for report, index in zip(reports, indices)
    ]
