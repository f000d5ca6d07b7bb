"""convirt.reports, the one report-text path: sections found inline and on their own
lines in any case, the share of the real Indiana reports it parses, sentences, the
warnings instead of silent fallbacks, and the Trainer's sampling going through it."""

import gzip
import importlib.util
import os
import sys
import warnings

import numpy as np
import pytest

import convirt
from convirt import _core, reports
from convirt.trainer import Trainer

sys.path.insert(0, os.path.dirname(__file__))
import tiny


def test_one_implementation_behind_every_name():
    for module in (convirt.data, convirt.text):
        assert module.split_sentences is reports.split_sentences
    assert convirt.text.report_sections is reports.report_sections
    assert convirt.text.sample_sentences is reports.sample_sentences
    assert convirt.data.extract_sections is reports.extract_sections


def test_the_two_old_splitters_now_agree():
    # data.split_sentences split "Dr." off; text.split_sentences kept the headings.
    report = (
        "FINDINGS: Dr. Smith reviewed the films. IMPRESSION: 1. Normal heart. "
        "2. no pneumothorax."
    )
    assert reports.split_sentences(report) == [
        "Dr. Smith reviewed the films.",
        "Normal heart.",
        "no pneumothorax.",
    ]


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        # inline, as Open-I and Indiana reports are written
        (
            "FINDINGS: Clear lungs. IMPRESSION: Normal chest.",
            "Clear lungs.",
            "Normal chest.",
        ),
        (
            "Findings: Clear lungs. Impression: Normal chest.",
            "Clear lungs.",
            "Normal chest.",
        ),
        (
            "findings: Clear lungs. impression: Normal chest.",
            "Clear lungs.",
            "Normal chest.",
        ),
        # without the colon: ALL CAPS inline, or alone on its line in any case
        ("FINDINGS Clear lungs. IMPRESSION Normal chest.", "Clear lungs.", "Normal chest."),
        (
            "Findings\nClear lungs.\n\nImpression\nNormal chest.",
            "Clear lungs.",
            "Normal chest.",
        ),
        # variants and misspellings of MIMIC-CXR and Open-I
        ("FINDINGS/IMPRESSION: Mild edema.", "Mild edema.", ""),
        ("COMPARISON: None. CONCLUSIONS: No change.", "", "No change."),
        ("IMPRESSON: Stable.", "", "Stable."),
        ("RECOMMENDATION(S): CT. IMPRESSIONS: Nodule.", "", "Nodule."),
        # a sentence without a period before the heading (Indiana: "... in the left sided
        # SVC IMPRESSION: ...")
        (
            "FINDINGS: Tip in the left sided SVC IMPRESSION: Line in place.",
            "Tip in the left sided SVC",
            "Line in place.",
        ),
        # words that are not headings
        (
            (
                "FINDINGS: Lungs clear, no findings of pneumonia. History of smoking. "
                "Impression of the prior film. IMPRESSION: Normal."
            ),
            (
                "Lungs clear, no findings of pneumonia. History of smoking. "
                "Impression of the prior film."
            ),
            "Normal.",
        ),
        (
            "FINDINGS: No acute findings. The impression of the prior study stands.",
            "No acute findings. The impression of the prior study stands.",
            "",
        ),
        (
            "FINDINGS: Heart normal. NO ACUTE FINDINGS IN THE CHEST. IMPRESSION: Normal.",
            "Heart normal. NO ACUTE FINDINGS IN THE CHEST.",
            "Normal.",
        ),
    ],
)
def test_sections_inline_in_any_case_with_or_without_colon(text, findings, impression):
    assert reports.extract_sections(text) == {
        "findings": findings,
        "impression": impression,
    }


@pytest.mark.parametrize(
    "text, sections",
    [
        # MIMIC-CXR's headings run together on one line: the ALL-CAPS text of one
        # heading, then the next heading
        (
            (
                "EXAMINATION: CHEST PA AND LAT INDICATION: cough TECHNIQUE: two views "
                "COMPARISON: none FINDINGS: Clear. IMPRESSION: Normal."
            ),
            [
                ("EXAMINATION", "CHEST PA AND LAT"),
                ("INDICATION", "cough"),
                ("TECHNIQUE", "two views"),
                ("COMPARISON", "none"),
                ("FINDINGS", "Clear."),
                ("IMPRESSION", "Normal."),
            ],
        ),
        (
            (
                "FINAL REPORT EXAMINATION: chest. CLINICAL HISTORY: fever. "
                "REASON FOR EXAM: cough. IMPRESSION: Normal."
            ),
            [
                ("FINAL REPORT", ""),
                ("EXAMINATION", "chest."),
                ("CLINICAL HISTORY", "fever."),
                ("REASON FOR EXAM", "cough."),
                ("IMPRESSION", "Normal."),
            ],
        ),
        # a known name that ends a heading's own words at the start of a sentence
        # stays one heading
        (
            "CHEST IMPRESSION: Normal. PRIOR HISTORY: none.",
            [("CHEST IMPRESSION", "Normal."), ("PRIOR HISTORY", "none.")],
        ),
    ],
)
def test_all_caps_text_then_a_heading_is_split(text, sections):
    assert reports.report_sections(text) == sections


def test_all_real_reports_the_package_can_read():
    """The real Indiana University reports (torchxrayvision's data file): each is
    ``"FINDINGS: f IMPRESSION: i"``, built from the XML's two fields, so the sections to
    recover are known. Measured: every impression found (3921 of 3921 reports that
    have one; before inline headings, 502) and 3925 of 3927 reports parsed exactly
    (before, 508); the other two are read as they are written: one report's IMPRESSION
    field holds a whole second report with its own headings, the other has a
    "KUB XXXX:" section inside its findings."""
    try:
        real = convirt.datasets.indiana_reports()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    exact = found = with_impression = 0
    for report in real:
        findings = impression = ""
        if report.startswith("FINDINGS: "):
            findings, _, impression = report[len("FINDINGS: ") :].rpartition(
                " IMPRESSION: "
            )
            if not findings:
                findings, impression = impression, ""
        else:
            impression = report[len("IMPRESSION: ") :]
        expected = {
            "findings": " ".join(findings.split()),
            "impression": " ".join(impression.split()),
        }
        got = reports.extract_sections(report)
        exact += got == expected
        with_impression += bool(impression)
        found += bool(impression) and bool(got["impression"])
    assert len(real) > 3900
    assert found == with_impression > 3900
    assert exact >= 0.999 * len(real), (exact, len(real))
    # The reports without an impression (findings only) are counted, not hidden.
    without = len(real) - with_impression
    with pytest.warns(UserWarning, match=f"^{without} of {len(real)} reports have no"):
        texts = reports.impressions(real)
    assert sum(text == report for text, report in zip(texts, real)) == without


def test_indiana_reports_with_their_ids():
    """indiana_reports(with_ids=True): the same texts, each with its Open-I report id
    and image ids, which are the ids of torchxrayvision's own image table; the count in
    the docstring is the one returned."""
    try:
        texts = convirt.datasets.indiana_reports()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    records = convirt.datasets.indiana_reports(with_ids=True)
    assert [record.text for record in records] == texts
    assert f"{len(texts):,} are returned" in " ".join(
        convirt.datasets.indiana_reports.__doc__.split()
    )
    first = records[0]
    assert isinstance(first, convirt.datasets.IndianaReport)
    assert first.uid == "CXR1"
    assert first.image_ids == ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")
    assert first.text.startswith(
        "FINDINGS: The cardiac silhouette"
    ) and first.text.endswith("IMPRESSION: Normal chest x-XXXX.")
    uids = [record.uid for record in records]
    assert len(set(uids)) == len(uids)
    image_ids = [i for record in records for i in record.image_ids]
    assert len(set(image_ids)) == len(image_ids) == 7430
    assert all(
        i.startswith(record.uid + "_") for record in records for i in record.image_ids
    )
    assert sum(not record.image_ids for record in records) == 101
    # the ids pair with torchxrayvision's image table (its t-SNE view labels)
    data = os.path.join(
        os.path.dirname(importlib.util.find_spec("torchxrayvision").origin), "data"
    )
    table = os.path.join(data, "nlmcxr_tsne_pa.csv.gz")
    if os.path.exists(table):
        with gzip.open(table, "rt") as f:
            known = {line.split(",")[0] for line in f.read().splitlines()[1:]}
        assert len(known & set(image_ids)) > 0.9 * len(known)
    assert convirt.datasets.indiana_reports(2, with_ids=True) == records[:2]


def test_impressions_warn_with_the_number_without_one():
    texts = ["FINDINGS: Clear. IMPRESSION: Normal.", "Clear lungs.", "FINDINGS: Clear."]
    with pytest.warns(UserWarning, match="2 of 3 reports have no IMPRESSION section"):
        assert reports.impressions(texts) == ["Normal.", "Clear lungs.", "FINDINGS: Clear."]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reports.impressions(texts[:1]) == ["Normal."]


def write_mimic(root, report_texts):
    """A minimal MIMIC-CXR-JPG folder: one frontal image per study, its report."""
    lines = ["dicom_id,subject_id,study_id,ViewPosition"]
    for k, text in enumerate(report_texts):
        subject, study = f"1000000{k}", f"5000000{k}"
        lines.append(f"d{k},{subject},{study},PA")
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"s{study}.txt").write_text(text)
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(lines) + "\n")


def test_mimic_reports_without_sections_are_counted_and_warned(tmp_path):
    write_mimic(
        tmp_path,
        [
            "FINDINGS: Clear.\n IMPRESSION: Normal.",
            "EXAMINATION: chest\n\nThe lungs are clear.\n",
            "Heart normal.\n\nNo effusion.\n",
        ],
    )
    with pytest.warns(UserWarning, match="2 of 3 MIMIC-CXR reports have neither"):
        dataset = convirt.datasets.MIMICCXRDataset(tmp_path, split=None)
    assert dataset.unsectioned_reports == 2
    assert dataset.reports == [
        "FINDINGS: Clear.\nIMPRESSION: Normal.",
        "IMPRESSION: The lungs are clear.",
        "IMPRESSION: No effusion.",
    ]


def test_the_sentence_draw_is_the_cores():
    report = "FINDINGS: " + " ".join(f"Sentence {k}." for k in range(7))
    sentences = reports.candidate_sentences(report)
    assert len(sentences) == 7
    for seed, step, index in ((0, 0, 0), (3, 17, 5), (2**63 + 1, 9, 123456)):
        u = _core.random_uniform(seed ^ reports._SENTENCE_TAG, step, index)
        assert reports.sample_sentence(report, seed, step, index) == sentences[int(u * 7)]


class _Recording(Trainer):
    """A Trainer that keeps what fit() hands each step."""

    def step(self, images, reports=None, *, sample_sentence=True, _text=None):
        self.seen.append((self.step_count, list(reports), _text))
        return super().step(images, reports, sample_sentence=sample_sentence, _text=_text)


def test_the_trainer_samples_through_convirt_reports(tmp_path):
    image, text = tiny.towers(str(tmp_path / "vocab"))
    images, texts = tiny.pairs(12, 32, seed=4)
    texts = [
        f"INDICATION: cough. FINDINGS: {r} IMPRESSION: no pleural effusion." for r in texts
    ]
    trainer = _Recording(image, text, image_size=32, progress=False, seed=3)
    trainer.seen = []
    trainer.fit((images, texts), epochs=1, batch_size=4)
    order = convirt.loader.BatchLoader(
        convirt.data.ArrayDataset(images, texts), batch_size=4, seed=3
    ).batch_indices(0)
    assert len(trainer.seen) == 3
    for (step, batch_reports, (ids, mask)), indices in zip(trainer.seen, order):
        assert batch_reports == [texts[i] for i in indices]
        sentences = reports.sample_sentences(
            batch_reports, seed=3, step=step, indices=indices.tolist()
        )
        assert not any(s.startswith(("INDICATION", "cough")) for s in sentences)
        expected_ids, expected_mask = convirt.text.tokenize(
            text.tokenizer, sentences, max_length=text.max_length
        )
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(mask, expected_mask)
