"""A synthetic clinical-note corpus, so the federated-learning demo runs
offline on data with the shape of the real thing.

Every note is one short outpatient note (30-80 words, plain ASCII, one line):
a header naming the department, the patient and the complaint, vitals, an
exam finding, often a test result, a medication with its dose and frequency,
a plan and a follow-up.  All of it comes from the fixed word lists below and a
`random.Random` seeded with (seed, site); no external data is read.

The split across sites is non-IID, as real hospitals are:

* site k is mostly (70%) one specialty, `SPECIALTIES[k % len(SPECIALTIES)]`,
  with some (10%) of the next one, so most frequent departments differ
  between sites and so do their complaints, drugs and tests;
* within its specialties a site favours some complaints and drugs over others
  (its own weights), and it writes them in one of four house styles (header,
  vitals format, abbreviations; site k uses `STYLES[k % 4]`), so neighbouring
  sites word even shared content differently;
* a shared minority (20%) of notes are general-medicine notes written in one
  federation-wide style, the structure every site has in common.

A site's held-out notes come from that site's own distribution and share no
note with its training notes.  A site's corpus depends only on the seed and
its index, not on how many sites the federation has, so adding a site leaves
the others' data as it was.

`write_corpus` lays the corpus out as the demo reads it:
``out_dir/site-{i}/train.txt`` and ``heldout.txt``, UTF-8 (ASCII in fact),
one note per line; `read_notes` reads such a file back (blank lines ignored).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InvalidArgument

PRIMARY_SHARE = 0.7     # of a site's notes from its own specialty
SECONDARY_SHARE = 0.1   # from the next specialty; the rest are shared general notes
MIN_WORDS, MAX_WORDS = 30, 80


@dataclass(frozen=True)
class Medication:
    name: str
    doses: tuple[str, ...]
    unit: str
    frequencies: tuple[str, ...]


@dataclass(frozen=True)
class Specialty:
    name: str                       # as the header writes it
    complaints: tuple[str, ...]
    history: tuple[str, ...]
    findings: tuple[str, ...]       # exam
    results: tuple[str, ...]        # a test and what it showed
    medications: tuple[Medication, ...]
    plans: tuple[str, ...]


def _m(name: str, doses: str, unit: str, *freq: str) -> Medication:
    return Medication(name, tuple(doses.split()), unit, freq)


_DAILY, _BID, _TID = "once daily", "twice daily", "three times daily"

SPECIALTIES: tuple[Specialty, ...] = (
    Specialty(
        "Cardiology",
        ("exertional chest pressure", "palpitations", "ankle swelling", "shortness of breath "
         "on exertion", "dizziness on standing", "fatigue with climbing stairs"),
        ("hypertension", "hyperlipidemia", "prior myocardial infarction",
         "atrial fibrillation", "heart failure with reduced ejection fraction"),
        ("irregularly irregular rhythm", "soft systolic murmur at the apex",
         "bilateral pitting edema to the shins", "jugular venous distension",
         "regular rate and rhythm without murmur"),
        ("ECG shows atrial fibrillation with controlled rate", "echocardiogram shows ejection "
         "fraction of 35 percent", "troponin negative times two", "Holter monitor shows "
         "frequent ectopic beats", "BNP elevated at 640"),
        (_m("metoprolol", "25 50 100", "mg", _DAILY, _BID), _m("apixaban", "2.5 5", "mg", _BID),
         _m("atorvastatin", "20 40 80", "mg", _DAILY), _m("furosemide", "20 40", "mg", _DAILY),
         _m("lisinopril", "5 10 20", "mg", _DAILY)),
        ("rate control and anticoagulation", "repeat echocardiogram", "cardiac rehab referral",
         "low sodium diet and daily weights", "stress test")),
    Specialty(
        "Pulmonology",
        ("chronic cough", "wheezing at night", "worsening dyspnea", "sputum production",
         "snoring and daytime sleepiness", "chest tightness in cold air"),
        ("asthma since childhood", "COPD", "30 pack-year smoking history",
         "obstructive sleep apnea", "prior pneumonia"),
        ("scattered expiratory wheezes", "diminished breath sounds at the bases",
         "prolonged expiratory phase", "fine crackles at both bases", "clear lungs bilaterally"),
        ("spirometry shows FEV1 of 58 percent predicted", "chest x-ray shows hyperinflation",
         "CT chest shows a 6 mm nodule", "sleep study shows AHI of 24",
         "peak flow reduced to 300"),
        (_m("albuterol inhaler", "90 180", "mcg", "every 4 hours as needed"),
         _m("tiotropium", "18", "mcg", _DAILY), _m("fluticasone-salmeterol", "250/50 500/50",
                                                   "mcg", _BID),
         _m("prednisone", "20 40", "mg", "daily for 5 days"), _m("montelukast", "10", "mg",
                                                                 "at bedtime")),
        ("inhaler technique reviewed", "pulmonary rehab", "CPAP titration",
         "smoking cessation counseling", "repeat CT in 12 months")),
    Specialty(
        "Endocrinology",
        ("poorly controlled blood sugars", "weight gain and cold intolerance", "tremor and "
         "weight loss", "frequent urination", "numbness in both feet", "low energy"),
        ("type 2 diabetes", "type 1 diabetes", "hypothyroidism", "Graves disease",
         "obesity"),
        ("diminished monofilament sensation in the feet", "enlarged nontender thyroid",
         "fine tremor of outstretched hands", "acanthosis nigricans at the neck",
         "normal foot exam"),
        ("HbA1c is 9.2 percent", "TSH is 8.4", "free T4 elevated at 2.9",
         "fasting glucose 186", "urine albumin to creatinine ratio 45"),
        (_m("metformin", "500 1000", "mg", _BID), _m("insulin glargine", "10 20 30", "units",
                                                     "at bedtime"),
         _m("levothyroxine", "50 75 100", "mcg", "every morning"),
         _m("semaglutide", "0.25 0.5 1", "mg", "weekly"), _m("methimazole", "5 10", "mg",
                                                             _DAILY)),
        ("glucose log review", "diabetes education", "repeat thyroid panel in 6 weeks",
         "annual eye exam", "dietitian referral")),
    Specialty(
        "Neurology",
        ("recurrent headaches", "episodes of numbness in the left arm", "memory lapses",
         "new seizures", "tremor at rest", "double vision"),
        ("migraine", "epilepsy", "prior stroke", "Parkinson disease", "multiple sclerosis"),
        ("mild left pronator drift", "resting tremor of the right hand",
         "normal cranial nerves", "reduced vibration sense at the toes",
         "wide-based unsteady gait"),
        ("MRI brain shows scattered white matter lesions", "EEG shows left temporal "
         "sharp waves", "CT head without acute findings", "nerve conduction study shows "
         "axonal neuropathy", "MoCA score 22 of 30"),
        (_m("levetiracetam", "500 750 1000", "mg", _BID), _m("sumatriptan", "50 100", "mg",
                                                             "as needed for migraine"),
         _m("topiramate", "25 50", "mg", _BID), _m("carbidopa-levodopa", "25/100", "mg",
                                                    _TID),
         _m("aspirin", "81", "mg", _DAILY)),
        ("headache diary", "seizure precautions and no driving", "physical therapy for gait",
         "repeat MRI in 6 months", "neuropsychological testing")),
    Specialty(
        "Orthopedics",
        ("right knee pain", "low back pain radiating to the leg", "shoulder pain with "
         "overhead reach", "wrist pain after a fall", "hip stiffness in the morning",
         "ankle swelling after a twist"),
        ("osteoarthritis", "prior ACL reconstruction", "osteoporosis", "rotator cuff tear",
         "lumbar disc herniation"),
        ("medial joint line tenderness", "positive straight leg raise on the left",
         "painful arc of abduction", "tenderness at the anatomic snuffbox",
         "full range of motion without effusion"),
        ("x-ray shows joint space narrowing", "MRI shows a medial meniscus tear",
         "x-ray shows a nondisplaced distal radius fracture", "DEXA T-score of minus 2.7",
         "MRI lumbar spine shows L5-S1 disc protrusion"),
        (_m("naproxen", "250 500", "mg", _BID), _m("ibuprofen", "400 600", "mg", _TID),
         _m("acetaminophen", "500 1000", "mg", "every 8 hours as needed"),
         _m("cyclobenzaprine", "5 10", "mg", "at bedtime"), _m("alendronate", "70", "mg",
                                                               "weekly")),
        ("physical therapy twice weekly", "cortisone injection", "splint and ice",
         "surgical consult", "weight-bearing as tolerated")),
    Specialty(
        "Gastroenterology",
        ("heartburn after meals", "abdominal bloating", "blood in the stool",
         "difficulty swallowing", "upper abdominal pain", "loose stools for weeks"),
        ("GERD", "ulcerative colitis", "Crohn disease", "fatty liver disease",
         "irritable bowel syndrome"),
        ("epigastric tenderness without guarding", "soft nondistended abdomen",
         "mild hepatomegaly", "hyperactive bowel sounds", "right lower quadrant tenderness"),
        ("endoscopy shows erosive esophagitis", "colonoscopy shows mild proctitis",
         "ALT elevated at 84", "fecal calprotectin 310", "ultrasound shows a fatty liver"),
        (_m("omeprazole", "20 40", "mg", _DAILY, _BID), _m("mesalamine", "1.2 2.4", "g",
                                                           _DAILY),
         _m("famotidine", "20 40", "mg", "at bedtime"), _m("dicyclomine", "10 20", "mg",
                                                           _TID),
         _m("budesonide", "9", "mg", _DAILY)),
        ("low fat diet", "repeat colonoscopy in 3 years", "avoid late meals",
         "hepatitis panel", "stool studies")),
    Specialty(
        "Nephrology",
        ("foamy urine", "rising creatinine", "leg swelling", "flank pain",
         "decreased urine output", "muscle cramps"),
        ("chronic kidney disease stage 3", "diabetic nephropathy", "kidney stones",
         "polycystic kidney disease", "IgA nephropathy"),
        ("trace edema at the ankles", "no costovertebral angle tenderness",
         "palpable enlarged kidneys", "euvolemic on exam", "mild pallor"),
        ("eGFR is 38", "potassium 5.6", "urine protein 1.8 grams per day",
         "renal ultrasound shows a 7 mm stone", "hemoglobin 10.1"),
        (_m("losartan", "25 50 100", "mg", _DAILY), _m("sodium bicarbonate", "650", "mg", _BID),
         _m("sevelamer", "800", "mg", "with meals"), _m("tamsulosin", "0.4", "mg", _DAILY),
         _m("erythropoietin", "4000", "units", "weekly")),
        ("renal diet education", "repeat labs in 4 weeks", "avoid NSAIDs",
         "fluid intake of 2 liters", "dialysis access planning")),
    Specialty(
        "Psychiatry",
        ("low mood", "panic attacks", "poor sleep", "racing thoughts", "worry most days",
         "poor concentration at work"),
        ("major depressive disorder", "generalized anxiety disorder", "bipolar disorder",
         "PTSD", "ADHD"),
        ("constricted affect and slowed speech", "anxious affect, linear thought process",
         "euthymic mood, good insight", "pressured speech", "no suicidal ideation"),
        ("PHQ-9 score of 17", "GAD-7 score of 14", "lithium level 0.8",
         "sleep diary shows 4 hours nightly", "ASRS screen positive"),
        (_m("sertraline", "50 100", "mg", _DAILY), _m("escitalopram", "10 20", "mg", _DAILY),
         _m("lithium", "300", "mg", _BID), _m("trazodone", "50", "mg", "at bedtime"),
         _m("quetiapine", "25 50", "mg", "at bedtime")),
        ("weekly psychotherapy", "safety plan reviewed", "sleep hygiene",
         "mood chart", "medication adherence check")),
)

# The shared minority: general medicine, written the same way at every site.
GENERAL = Specialty(
    "General medicine",
    ("a sore throat", "high home blood pressure readings", "tiredness", "seasonal allergies",
     "a mild rash", "a cough and runny nose"),
    ("hypertension", "no chronic conditions", "seasonal allergies", "prediabetes"),
    ("clear lungs, normal heart sounds", "mild pharyngeal erythema", "clear nasal discharge",
     "normal exam"),
    ("rapid strep test negative", "basic metabolic panel normal", "lipid panel borderline",
     "HbA1c is 5.9 percent"),
    (_m("amlodipine", "5 10", "mg", _DAILY), _m("cetirizine", "10", "mg", _DAILY),
     _m("amoxicillin", "500", "mg", _TID), _m("hydrocortisone cream", "1", "percent", _BID)),
    ("rest and fluids", "vaccinations updated", "home blood pressure log",
     "diet and exercise counseling"))


@dataclass(frozen=True)
class HouseStyle:
    """How a site writes its notes: the words differ, the structure does not."""

    header: str          # with {dept}
    patient: str         # with {age}, {sex}
    sexes: tuple[str, str]
    vitals: str          # with {sys}, {dia}, {hr}, {rr}, {temp}, {spo2}
    exam: str
    result: str
    history: str
    medication: tuple[str, ...]   # with {drug}, {dose}, {unit}, {freq}
    plan: str
    follow_up: str       # with {n}


STYLES: tuple[HouseStyle, ...] = (
    HouseStyle("{dept} clinic note.", "{age}-year-old {sex} presenting with", ("man", "woman"),
               "Vitals: BP {sys}/{dia}, HR {hr}, RR {rr}, T {temp} C, SpO2 {spo2}%.",
               "Exam: {x}.", "Results: {x}.", "History of {x}.",
               ("Started {drug} {dose} {unit} {freq}.", "Continue {drug} {dose} {unit} {freq}."),
               "Plan: {x}.", "Follow-up in {n} weeks."),
    HouseStyle("Dept: {dept}.", "Pt is a {age} y/o {sex} c/o", ("M", "F"),
               "VS: {sys}/{dia} mmHg, P {hr}, R {rr}, {temp} C, sat {spo2}% RA.",
               "O/E {x}.", "Labs/imaging: {x}.", "PMH: {x}.",
               ("Rx {drug} {dose} {unit} {freq}.", "Cont {drug} {dose} {unit} {freq}."),
               "A/P: {x}.", "F/u {n} wk."),
    HouseStyle("{dept} outpatient visit.", "The patient is a {age} year old {sex} who reports",
               ("male", "female"),
               "Blood pressure {sys}/{dia}, pulse {hr}, respirations {rr}, temperature {temp}, "
               "oxygen saturation {spo2} percent.",
               "On examination, {x}.", "Workup: {x}.", "Past history includes {x}.",
               ("Prescribed {drug} {dose} {unit} {freq}.",
                "Dose adjusted to {drug} {dose} {unit} {freq}."),
               "Recommendations: {x}.", "Return to clinic in {n} weeks."),
    HouseStyle("Consult note, {dept} service.", "{age}{sex} referred for", ("M", "F"),
               "BP {sys}/{dia}; HR {hr}; RR {rr}; Temp {temp}; O2 sat {spo2}%.",
               "Findings: {x}.", "Diagnostics: {x}.", "Known {x}.",
               ("Initiated {drug} {dose} {unit} {freq}.", "Maintained on {drug} {dose} {unit} "
                "{freq}."),
               "Management: {x}.", "Review in {n} weeks."),
)
COMMON_STYLE = STYLES[0]


def _weights(rng: random.Random, n: int) -> list[float]:
    """A site's own preference over n options (skewed, every one possible)."""
    return [rng.gammavariate(0.6, 1.0) + 0.02 for _ in range(n)]


@dataclass(frozen=True)
class _Part:
    """One specialty in a site's mix: its share of the notes, the style they
    are written in, and the site's weights over each word list."""

    specialty: Specialty
    style: HouseStyle
    share: float
    weights: dict[str, list[float]]


_WEIGHTED = ("complaints", "history", "findings", "results", "medications", "plans")


@dataclass(frozen=True)
class _Profile:
    """What a site draws its notes from."""

    parts: tuple[_Part, ...]

    @classmethod
    def for_site(cls, site: int, rng: random.Random) -> _Profile:
        style = STYLES[site % len(STYLES)]
        mix = ((SPECIALTIES[site % len(SPECIALTIES)], style, PRIMARY_SHARE),
               (SPECIALTIES[(site + 1) % len(SPECIALTIES)], style, SECONDARY_SHARE),
               (GENERAL, COMMON_STYLE, 1 - PRIMARY_SHARE - SECONDARY_SHARE))
        return cls(tuple(
            _Part(spec, st, share, {f: _weights(rng, len(getattr(spec, f))) for f in _WEIGHTED})
            for spec, st, share in mix))

    def note(self, rng: random.Random) -> str:
        part = rng.choices(self.parts, weights=[p.share for p in self.parts])[0]
        spec, st, w = part.specialty, part.style, part.weights

        def pick(field: str) -> str:
            return rng.choices(getattr(spec, field), weights=w[field])[0]

        med = rng.choices(spec.medications, weights=w["medications"])[0]
        age = rng.randint(19, 89)
        sentences = [st.header.format(dept=spec.name),
                     f"{st.patient.format(age=age, sex=rng.choice(st.sexes))} "
                     f"{pick('complaints')} for {rng.randint(2, 21)} days."]
        if rng.random() < 0.7:
            sentences.append(st.history.format(x=pick("history")))
        sentences.append(st.vitals.format(
            sys=rng.randint(98, 178), dia=rng.randint(58, 102), hr=rng.randint(52, 118),
            rr=rng.randint(12, 24), temp=f"{rng.uniform(36.1, 38.4):.1f}",
            spo2=rng.randint(88, 100)))
        sentences.append(st.exam.format(x=pick("findings")))
        if rng.random() < 0.8:
            sentences.append(st.result.format(x=pick("results")))
        sentences.append(rng.choice(st.medication).format(
            drug=med.name, dose=rng.choice(med.doses), unit=med.unit,
            freq=rng.choice(med.frequencies)))
        sentences.append(st.plan.format(x=pick("plans")))
        sentences.append(st.follow_up.format(n=rng.choice((2, 4, 6, 8, 12))))
        return " ".join(sentences)


def _check(n_sites: int, n_train: int, n_heldout: int) -> None:
    if n_sites < 1:
        raise InvalidArgument(f"n_sites: must be at least 1, got {n_sites}")
    if n_train < 0 or n_heldout < 0:
        raise InvalidArgument(f"note counts: must not be negative, got n_train={n_train}, "
                              f"n_heldout={n_heldout}")


def generate_site_corpus(site_index: int, n_sites: int, n_train: int, n_heldout: int,
                         seed: int = 0) -> tuple[list[str], list[str]]:
    """(train notes, held-out notes) of one site: distinct notes from the
    site's own distribution, the same for the same (seed, site_index)."""
    _check(n_sites, n_train, n_heldout)
    if not 0 <= site_index < n_sites:
        raise InvalidArgument(f"site_index: must be in 0..{n_sites - 1}, got {site_index}")
    rng = random.Random(f"hearth-corpus/1/{seed}/{site_index}")
    profile = _Profile.for_site(site_index, rng)
    want = n_train + n_heldout
    seen: dict[str, None] = {}      # insertion-ordered set
    for _ in range(want * 20 + 100):
        if len(seen) == want:
            break
        seen.setdefault(profile.note(rng))
    else:
        raise InvalidArgument(f"n_train + n_heldout: {want} distinct notes is more than the "
                              "generator gives")
    notes = list(seen)
    return notes[:n_train], notes[n_train:]


def write_corpus(out_dir: Path, n_sites: int, n_train: int = 200, n_heldout: int = 40,
                 seed: int = 0) -> list[Path]:
    """out_dir/site-{i}/train.txt and heldout.txt, one note per line; the
    site directories, in site order."""
    _check(n_sites, n_train, n_heldout)
    dirs = []
    for i in range(n_sites):
        train, heldout = generate_site_corpus(i, n_sites, n_train, n_heldout, seed)
        site_dir = Path(out_dir) / f"site-{i}"
        site_dir.mkdir(parents=True, exist_ok=True)
        _write_notes(site_dir / "train.txt", train)
        _write_notes(site_dir / "heldout.txt", heldout)
        dirs.append(site_dir)
    return dirs


def _write_notes(path: Path, notes: Sequence[str]) -> None:
    path.write_text("".join(f"{n}\n" for n in notes), encoding="utf-8")


def read_notes(path: Path) -> list[str]:
    """The notes of a file that `write_corpus` wrote: one a line, blank
    lines ignored."""
    text = Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
