"""The wording of synthetic radiology reports: FINDINGS and IMPRESSION written from the
sampled findings, with the hedges, negations and filler sentences of real reports."""

from .findings import LOBES, SIDES

# Reports
# --------------------------------------------------------------------------------------

_ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
)
_ORDINAL_NUMBERS = ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th", "9th", "10th")


def write_report(findings, index, rng):
    """The report of image ``index`` of ``findings`` (from :func:`sample_findings`),
    phrased with choices drawn from the NumPy Generator ``rng``.

    Positive findings are always stated in FINDINGS (mild ones often hedged:
    "possible", "may represent", "likely"); absent findings are either negated ("No
    pleural effusion.") or not mentioned, never hedged. Sentences that name no finding
    ("The trachea is midline.") are mixed in. IMPRESSION summarises the positives, or
    says there is no acute process. Returns "FINDINGS: ...\\nIMPRESSION: ...".
    """
    f = {key: value[index] for key, value in findings.items()}
    labels = f["labels"]
    atelectasis, cardiomegaly, edema, fracture, effusion, pneumonia, pneumothorax = (
        bool(v) for v in labels[:7]
    )

    def pick(*options):
        return options[rng.integers(len(options))]

    def chance(p):
        return rng.random() < p

    findings_text = []
    impression = []

    if chance(0.35):
        findings_text.append(
            pick(
                "Frontal and lateral views of the chest were obtained.",
                "PA and lateral chest radiographs are provided.",
                "Single frontal view of the chest.",
                "Comparison is made to the prior study.",
                "Portable upright view of the chest.",
            )
        )
    if f.get("leads") and chance(0.7):
        findings_text.append(
            pick(
                "ECG leads overlie the chest.",
                "Monitoring leads project over the thorax.",
                "Cardiac monitoring leads are in place.",
            )
        )
    if f["low_volumes"] and chance(0.75):
        findings_text.append(
            pick(
                "Lung volumes are low.",
                "Low lung volumes.",
                "The examination is limited by low lung volumes.",
            )
        )
    elif chance(0.2):
        findings_text.append(
            pick("Lung volumes are normal.", "The lungs are well expanded.")
        )

    # Heart and mediastinum.
    severity = int(f["cardiomegaly_severity"])
    if cardiomegaly:
        degree = ("mildly", "moderately", "markedly")[severity - 1]
        noun = ("Mild", "Moderate", "Marked")[severity - 1]
        findings_text.append(
            pick(
                f"The heart is {degree} enlarged.",
                f"{noun} cardiomegaly.",
                f"The cardiac silhouette is {degree} enlarged.",
                f"Heart size is {degree} enlarged."
                if severity > 1
                else "Mild cardiomegaly.",
                f"There is {noun.lower()} enlargement of the cardiac silhouette.",
            )
        )
        impression.append(
            pick("Cardiomegaly.", f"{noun} cardiomegaly.", "Enlarged cardiac silhouette.")
        )
    elif chance(0.85):
        findings_text.append(
            pick(
                "Heart size is normal.",
                "The heart is normal in size.",
                "Normal heart size.",
                "The cardiac silhouette is within normal limits.",
                "No cardiomegaly.",
                "Heart size is within normal limits.",
            )
        )
    if chance(0.6):
        findings_text.append(
            pick(
                "The mediastinal and hilar contours are normal.",
                "Mediastinal contours are unremarkable.",
                "The trachea is midline.",
                "Hilar contours are unremarkable.",
                "The aortic arch is unremarkable.",
                "Cardiomediastinal silhouette is stable.",
            )
        )

    # Lungs.
    lung_sentences = []
    if edema:
        level = int(f["edema_severity"])
        if level == 1:
            lung_sentences.append(
                pick(
                    "Mild pulmonary vascular congestion.",
                    "There is mild interstitial edema.",
                    "Mild pulmonary edema.",
                    "Indistinct pulmonary vasculature may reflect mild edema.",
                )
            )
            impression.append(
                pick(
                    "Mild pulmonary edema.",
                    "Mild vascular congestion.",
                    "Findings likely represent mild interstitial edema.",
                )
            )
        elif level == 2:
            lung_sentences.append(
                pick(
                    "Moderate pulmonary edema with Kerley B lines.",
                    "Interstitial opacities and septal lines consistent with moderate pulmonary"
                    " edema.",
                    "There is moderate interstitial pulmonary edema.",
                )
            )
            impression.append(
                pick("Moderate pulmonary edema.", "Moderate interstitial edema.")
            )
        else:
            lung_sentences.append(
                pick(
                    "Diffuse perihilar airspace opacities consistent with severe pulmonary "
                    "edema.",
                    "Severe pulmonary edema.",
                    "Extensive bilateral perihilar opacities compatible with alveolar edema.",
                )
            )
            impression.append(pick("Severe pulmonary edema.", "Worsening pulmonary edema."))
    if pneumonia:
        lobe = LOBES[int(f["pneumonia_lobe"])]
        level = int(f["pneumonia_severity"])
        if level == 1:
            lung_sentences.append(
                pick(
                    f"Possible early pneumonia in the {lobe}.",
                    f"Subtle opacity in the {lobe} may represent early pneumonia.",
                    f"Patchy opacity in the {lobe}, possibly pneumonia.",
                    f"Ill-defined opacity in the {lobe} could reflect an early pneumonia.",
                )
            )
            impression.append(
                pick(
                    f"Possible early {lobe} pneumonia.",
                    "Findings may represent early pneumonia.",
                )
            )
        elif level == 2:
            lung_sentences.append(
                pick(
                    f"Focal consolidation in the {lobe}, concerning for pneumonia.",
                    f"There is airspace consolidation in the {lobe} consistent with "
                    f"pneumonia.",
                    f"Opacity in the {lobe} compatible with pneumonia.",
                )
            )
            impression.append(
                pick(
                    f"{lobe[0].upper() + lobe[1:]} pneumonia.", f"Pneumonia in the {lobe}."
                )
            )
        else:
            lung_sentences.append(
                pick(
                    f"Dense consolidation of the {lobe} with air bronchograms, compatible with "
                    f"pneumonia.",
                    f"Extensive consolidation in the {lobe} consistent with pneumonia.",
                )
            )
            impression.append(
                pick(
                    f"Extensive {lobe} pneumonia.",
                    f"Dense {lobe} consolidation, compatible with pneumonia.",
                )
            )
    if atelectasis:
        side = int(f["atelectasis_side"])
        level = int(f["atelectasis_severity"])
        where = "bibasilar" if side == 2 else f"{SIDES[side]} basilar"
        base = "both bases" if side == 2 else f"the {SIDES[side]} base"
        degree = ("Minimal", "Mild", "Moderate")[level - 1]
        if level == 1 and chance(0.6):
            lung_sentences.append(
                pick(
                    f"Linear opacity at {base} likely reflects subsegmental atelectasis.",
                    f"Minimal {where} opacity, likely atelectasis.",
                )
            )
        else:
            lung_sentences.append(
                pick(
                    f"{degree} {where} atelectasis.",
                    f"Plate-like atelectasis at {base}.",
                    f"There is {degree.lower()} {where} atelectasis.",
                )
            )
        impression.append(pick(f"{degree} {where} atelectasis.", "Atelectasis."))
    if not (edema or pneumonia or atelectasis):
        lung_sentences.append(
            pick(
                "The lungs are clear.",
                "Lungs are clear bilaterally.",
                "No focal consolidation.",
                "The lungs are clear without focal consolidation.",
                "No focal consolidation to suggest pneumonia.",
                "There is no focal airspace opacity.",
            )
        )
        if chance(0.3):
            lung_sentences.append(
                pick(
                    "No pulmonary edema.",
                    "No atelectasis.",
                    "There is no pulmonary vascular congestion.",
                )
            )
    else:
        negatives = []
        if not pneumonia:
            negatives.append(
                pick(
                    "No focal consolidation.",
                    "No pneumonia.",
                    "There is no focal consolidation to suggest pneumonia.",
                )
            )
        if not edema:
            negatives.append(pick("No pulmonary edema.", "There is no pulmonary edema."))
        for sentence in negatives:
            if chance(0.6):
                lung_sentences.append(sentence)
    rng.shuffle(lung_sentences)
    findings_text += lung_sentences

    # Pleura.
    if effusion:
        side = int(f["effusion_side"])
        size = int(f["effusion_size"])
        amount = ("Small", "Moderate", "Large")[size - 1]
        if side == 2:
            stated = pick(
                f"{amount} bilateral pleural effusions.",
                f"There are {amount.lower()} bilateral pleural effusions.",
            )
            summary = f"{amount} bilateral pleural effusions."
        else:
            sided = SIDES[side]
            stated = pick(
                f"{amount} {sided} pleural effusion.",
                f"There is a {amount.lower()} {sided} pleural effusion.",
                f"{amount} {sided} effusion layering at the base.",
            )
            if size == 1:
                stated = pick(
                    stated,
                    f"Blunting of the {sided} costophrenic angle suggests a small "
                    f"effusion.",
                    f"Possible trace {sided} pleural effusion.",
                )
            summary = f"{amount} {sided} pleural effusion."
        if not pneumothorax and chance(0.4):
            stated = stated[:-1] + " without pneumothorax."
        elif not pneumothorax and chance(0.5):
            stated += " " + pick("No pneumothorax.", "There is no pneumothorax.")
        findings_text.append(stated)
        impression.append(summary)
    if pneumothorax:
        sided = SIDES[int(f["pneumothorax_side"])]
        size = int(f["pneumothorax_size"])
        if size == 1:
            stated = pick(
                f"Small {sided} apical pneumothorax.",
                f"A tiny {sided} apical pneumothorax is suspected.",
                f"There is a small {sided} pneumothorax at the apex.",
            )
        elif size == 2:
            stated = pick(
                f"Moderate {sided} pneumothorax.",
                f"There is a moderate {sided} pneumothorax.",
            )
        else:
            stated = pick(
                f"Large {sided} pneumothorax with a visible visceral pleural line.",
                f"Large {sided} pneumothorax with mild mediastinal shift.",
            )
        if not effusion and chance(0.4):
            stated += " " + pick("No pleural effusion.", "There is no pleural effusion.")
        findings_text.append(stated)
        impression.append(
            pick(
                f"{stated.split('.')[0]}.",
                f"{('Small', 'Moderate', 'Large')[size - 1]} {sided} pneumothorax.",
            )
        )
    if not effusion and not pneumothorax:
        findings_text.append(
            pick(
                "No pleural effusion or pneumothorax.",
                "There is no pleural effusion or pneumothorax.",
                "No effusion or pneumothorax is seen.",
                "The costophrenic angles are sharp.",
                "No pneumothorax.",
                "There is no pleural effusion.",
            )
        )

    # Bones.
    if fracture:
        sided = SIDES[int(f["fracture_side"])]
        rib = int(f["fracture_rib"]) - 1
        ordinal = pick(_ORDINALS[rib], _ORDINAL_NUMBERS[rib])
        where = "lateral" if f["fracture_position"] > 0.65 else "posterolateral"
        if f["fracture_healing"]:
            stated = pick(
                f"Healing fracture of the {sided} {ordinal} rib.",
                f"Callus formation at a healing {sided} {ordinal} rib fracture.",
                f"Subacute {sided} {ordinal} rib fracture with callus.",
            )
            summary = f"Healing {sided} {ordinal} rib fracture."
        elif f["fracture_displaced"]:
            stated = pick(
                f"Acute displaced fracture of the {sided} {ordinal} {where} rib.",
                f"There is a displaced fracture of the {sided} {ordinal} rib.",
            )
            summary = f"Acute displaced {sided} {ordinal} rib fracture."
        else:
            stated = pick(
                f"Nondisplaced fracture of the {sided} {ordinal} {where} rib.",
                f"Possible nondisplaced fracture of the {sided} {ordinal} rib.",
                f"Subtle cortical break of the {sided} {ordinal} rib, likely a "
                f"nondisplaced fracture.",
            )
            summary = f"{sided.capitalize()} {ordinal} rib fracture."
        findings_text.append(stated)
        impression.append(summary)
    elif chance(0.7):
        findings_text.append(
            pick(
                "No acute osseous abnormality.",
                "No displaced rib fracture.",
                "The visualized osseous structures are unremarkable.",
                "Osseous structures are intact.",
                "No acute fracture is seen.",
            )
        )
    if chance(0.3):
        findings_text.append(
            pick(
                "The upper abdomen is unremarkable.",
                "Soft tissues are unremarkable.",
                "The imaged upper abdomen is within normal limits.",
                "Degenerative changes of the thoracic spine.",
            )
        )

    if not impression:
        impression = [
            pick(
                "No acute cardiopulmonary process.",
                "No acute cardiopulmonary abnormality.",
                "Normal chest radiograph.",
                "No radiographic evidence of acute disease.",
                "No acute intrathoracic process.",
            )
        ]
    else:
        keep = max(1, min(len(impression), 1 + rng.binomial(len(impression) - 1, 0.6)))
        impression = impression[:keep]
    numbered = len(impression) > 1 and chance(0.4)
    if numbered:
        impression_text = " ".join(f"{k + 1}. {text}" for k, text in enumerate(impression))
    else:
        impression_text = " ".join(impression)
    return f"FINDINGS: {' '.join(findings_text)}\nIMPRESSION: {impression_text}"
