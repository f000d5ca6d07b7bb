"""convirt.text: tokenization (against transformers' tokenizer), tokenizers from
tokenizer.json and vocab.txt, and the sentence sampling transform."""

import collections
import os
import shutil

import numpy as np
import pytest

import convirt
from convirt import text

TEXTS = [
    "The lungs are clear.",
    "No pleural effusion, pneumothorax or focal consolidation.",
    "",
    "Héart size is NORMAL;  mediastinal contours are unremarkable (stable).",
    "word " * 200,
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    """all-MiniLM-L6-v2's tokenizer (the test is skipped without the package)."""
    return text.load_tokenizer(minilm_dir)


# ---- tokenization ----------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [128, 16])
def test_tokenize_matches_transformers(tokenizer, minilm_dir, max_length):
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    ids, mask = text.tokenize(tokenizer, TEXTS, max_length=max_length)
    expected = reference(
        TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.flags.c_contiguous and mask.flags.c_contiguous
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids.shape[1] == max_length  # the long text fills it; [SEP] survives truncation
    assert ids[4, -1] == tokenizer.token_to_id("[SEP]")


def test_tokenize_pads_to_the_longest_in_the_batch(tokenizer):
    ids, mask = text.tokenize(tokenizer, ["short", "a somewhat longer sentence here"])
    assert ids.shape == (2, mask.sum(1).max())
    assert mask[0].tolist() == [1, 1, 1] + [0] * (ids.shape[1] - 3)
    assert np.all(ids[0, 3:] == tokenizer.token_to_id("[PAD]"))


def test_tokenize_leaves_the_callers_tokenizer_alone(minilm_dir):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))  # pads to 128
    before = raw.padding, raw.truncation
    ids, _ = text.tokenize(raw, ["The lungs are clear."], max_length=32)
    assert ids.shape == (1, 7)
    assert (raw.padding, raw.truncation) == before


def test_vocab_txt_tokenizer_matches_tokenizer_json(tmp_path, tokenizer, minilm_dir):
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(minilm_dir, name), tmp_path / name)
    from_vocab = text.load_tokenizer(tmp_path)
    for a, b in zip(text.tokenize(tokenizer, TEXTS), text.tokenize(from_vocab, TEXTS)):
        np.testing.assert_array_equal(a, b)


def test_load_tokenizer_none_when_absent(tmp_path):
    assert text.load_tokenizer(tmp_path) is None


def test_vocab_without_special_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="lacks the special token"):
        text.load_tokenizer(tmp_path)


def test_tokenizer_json_round_trip(tokenizer):
    again = text.tokenizer_from_json(tokenizer.to_str())
    for a, b in zip(text.tokenize(tokenizer, TEXTS), text.tokenize(again, TEXTS)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        text.tokenizer_from_json("{nope")


def test_tokenize_bad_input(tokenizer):
    with pytest.raises(TypeError, match="got a single str"):
        text.tokenize(tokenizer, "The lungs are clear.")
    with pytest.raises(ValueError, match="texts is empty"):
        text.tokenize(tokenizer, [])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
        text.tokenize(tokenizer, ["ok", None])
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        text.tokenize(tokenizer, ["ok"], max_length=1)
    with pytest.raises(ValueError, match="no tokenizer"):
        text.tokenize(None, ["ok"])


def test_encoder_takes_strings(tokenizer, minilm_dir, tiny_bert):
    encoder = convirt.Encoder.from_pretrained(minilm_dir, proj_dim=16)
    texts = ["The lungs are clear.", "Mild cardiomegaly."]
    ids, mask = text.tokenize(tokenizer, texts)
    np.testing.assert_array_equal(encoder.embed(texts), encoder.embed(ids, mask))
    with pytest.raises(ValueError, match="has no tokenizer"):
        tiny_bert.encode(texts)


# ---- sentences and sections --------------------------------------------------------------

REPORT = (
    "EXAMINATION: Chest PA and lateral. INDICATION: Cough, fever. "
    "FINDINGS: The heart size is normal. The lungs are clear. There is no pleural "
    "effusion measuring more than 1.5 cm. IMPRESSION: 1. No acute cardiopulmonary "
    "process. 2. Dr. Smith was notified at 3 p.m."
)


def test_split_sentences():
    assert text.split_sentences(
        "The lungs are clear.  No effusion!\nIs there a mass? 1. Stable. 2) Unchanged "
        "vs. prior, e.g. on 2009 films. Nodule of 1.5 cm."
    ) == [
        "The lungs are clear.",
        "No effusion!",
        "Is there a mass?",
        "Stable.",
        "Unchanged vs. prior, e.g. on 2009 films.",
        "Nodule of 1.5 cm.",
    ]
    assert text.split_sentences("") == []
    assert text.split_sentences(" . ... ") == []
    assert text.split_sentences("no final period") == ["no final period"]


def test_report_sections():
    sections = text.report_sections(REPORT)
    assert [h for h, _ in sections] == [
        "EXAMINATION",
        "INDICATION",
        "FINDINGS",
        "IMPRESSION",
    ]
    assert sections[2][1].startswith("The heart size is normal.")
    assert text.report_sections("No headers here.") == [(None, "No headers here.")]
    assert text.report_sections("Preamble. FINDINGS: x.")[0] == (None, "Preamble.")


def test_sampling_uses_findings_and_impression_only():
    allowed = {
        "The heart size is normal.",
        "The lungs are clear.",
        "There is no pleural effusion measuring more than 1.5 cm.",
        "No acute cardiopulmonary process.",
        "Dr. Smith was notified at 3 p.m.",
    }
    seen = {text.sample_sentence(REPORT, seed=0, step=0, index=i) for i in range(400)}
    assert seen == allowed


def test_sampling_without_sections_uses_the_whole_report():
    report = "Heart normal. Lungs clear. INDICATION: cough."
    seen = {text.sample_sentence(report, 1, 0, i) for i in range(200)}
    assert seen == {"Heart normal.", "Lungs clear.", "cough."}


def test_sampling_is_uniform():
    report = "FINDINGS: " + " ".join(f"Sentence number {k}." for k in range(5))
    counts = collections.Counter(text.sample_sentence(report, 7, 3, i) for i in range(5000))
    assert len(counts) == 5
    expected = 1000
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # p = 0.0004 for 4 degrees of freedom


def test_sampling_is_keyed_by_seed_step_and_index_not_order():
    reports = [REPORT, "FINDINGS: A. B. C. D. E. F.", "One. Two. Three. Four."] * 10
    indices = list(range(100, 130))
    first = text.sample_sentences(reports, seed=5, step=2, indices=indices)
    order = np.random.default_rng(0).permutation(30)
    shuffled = text.sample_sentences(
        [reports[i] for i in order], seed=5, step=2, indices=[indices[i] for i in order]
    )
    assert shuffled == [first[i] for i in order]
    assert first == text.sample_sentences(reports, seed=5, step=2, indices=indices)
    other_step = text.sample_sentences(reports, seed=5, step=3, indices=indices)
    other_seed = text.sample_sentences(reports, seed=6, step=2, indices=indices)
    assert other_step != first and other_seed != first


def test_empty_reports():
    for report in ("", "   ", "FINDINGS: IMPRESSION:", None, float("nan")):
        with pytest.raises(ValueError, match="has no sentence to sample"):
            text.sample_sentence(report, 0, 0, 0)
        assert text.sample_sentence(report, 0, 0, 0, on_empty="blank") == ""
    assert text.sample_sentences(["", "Fine."], 0, 0, on_empty="blank") == ["", "Fine."]
    with pytest.raises(ValueError, match="report 1 has no sentence"):
        text.sample_sentences(["Fine.", ""], 0, 0)


def test_sampling_bad_arguments():
    with pytest.raises(TypeError, match="must be a str, got int"):
        text.sample_sentence(42, 0, 0, 0)
    with pytest.raises(ValueError, match="on_empty must be"):
        text.sample_sentence("A.", 0, 0, 0, on_empty="skip")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        text.sample_sentence("A.", -1, 0, 0)
    with pytest.raises(TypeError, match="got a single str"):
        text.sample_sentences("A. B.", 0, 0)
    with pytest.raises(ValueError, match="2 reports but 1 indices"):
        text.sample_sentences(["A.", "B."], 0, 0, indices=[3])


def test_indiana_reports_if_available():
    """The real Indiana University reports shipped by torchxrayvision (when installed):
    every report yields a sentence, from FINDINGS/IMPRESSION."""
    from convirt.datasets import indiana_reports

    try:
        reports = indiana_reports()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    assert len(reports) > 3000
    sentences = text.sample_sentences(reports, seed=0, step=0, on_empty="blank")
    assert sum(bool(s) for s in sentences) == len(reports)
    assert all(len(s) < 1000 for s in sentences)
