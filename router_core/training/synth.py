"""``s3router data synth``: a deterministic multilingual speech corpus from espeak-ng.

For each language, filtered real sentences (:mod:`router_core.training.text_sources`) are split into disjoint
train/dev/test sets and spoken by random espeak-ng voice variants, speeds and pitches. The dev and test sets
are spoken by the 11 voices of the speaker-ID task; training by those and by 62 more variants, over wider
speeds and pitches, 60% of it degraded (:mod:`router_core.training.augment`). ``dev_unheard`` and
``test_unheard`` speak the dev and test sentences again in two sets of six variants that no training utterance
uses (what users' voices are to the model). Audio is stored as 16 kHz mono FLAC; manifests are JSONL with
``audio``, ``text`` (normalised lower-case transcript), ``ipa`` (espeak-ng's phonemes, language-switch markers
and liaison dashes removed), ``speaker``, ``lang`` and ``label`` fields — ``s3router train`` reads ``text``
(ctc) or ``label`` (classify; the speaker and language-ID manifests set it). The speaker-ID manifests
hold only the utterances of its 11 voices at the dev/test pitches, undegraded (:func:`speaks_for_speaker_id`).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import re
import subprocess
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from router_core.audio import decode_audio
from router_core.errors import InvalidInputError
from router_core.training.everyday_dev import DEV_EVERYDAY
from router_core.training.text_sources import ciphered_sentences, everyday_sentences, normalize, sentences

VOICES = {"en": "en-us", "fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt-br"}
# The speaker-ID task's 11 voices; the dev and test sets are spoken by them, as training half is.
SPEAKERS = [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 5)]
# espeak-ng voice variants (`espeak-ng --voices=variant`, file names) never used for training:
TEST_VOICES = ["f5", "klatt", "Andy", "Annie", "david", "linda"]  # test_unheard sets, bench_quality
DEV_VOICES = ["m8", "klatt3", "Alicia", "steph", "max", "grandma"]  # dev_unheard sets: model choice
# The other half of training is spoken by these (every variant but the held-out ones above, whispers,
# robots, the croak, the PA announcer and "fast", which do not sound like a person talking).
OTHER_VOICES = [
    "adam", "Alex", "Andrea", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "Denis", "Diogo",
    "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "Henrique", "Hugo", "iven", "iven2", "iven3",
    "iven4", "Jacky", "john", "kaukovalta", "Lee", "marcelo", "Marco", "Mario", "Michael", "michel",
    "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro", "quincy", "RicishayMax", "RicishayMax2",
    "RicishayMax3", "rob", "robert", "steph2", "steph3", "Storm", "Tweaky", "zac", "anika", "AnxiousAndy",
    "grandpa", "klatt2", "klatt4", "klatt5", "klatt6", "norbert", "sandro", "shelby", "travis", "victor",
]
EVAL_SPEEDS, EVAL_PITCHES = (140, 190), (35, 65)  # words per minute, espeak pitch: dev and test sets
TRAIN_SPEEDS, TRAIN_PITCHES = (115, 225), (15, 85)  # training: wider
AUGMENTED = 0.6  # share of training utterances degraded by :mod:`router_core.training.augment`
# Bumped whenever an utterance's audio or labels would come out differently: an utterance written by an
# older version is spoken again rather than reused. 2: clauses after the first are no longer garbled.
# 3: training utterances may be augmented (the row says how).
SYNTH_VERSION = 3
_SWITCH = re.compile(r"\([a-z-]+\)")


@dataclass(frozen=True)
class Utterance:
    lang: str
    split: str
    index: int
    sentence: str
    speaker: str
    speed: int
    pitch: int
    augment: bool = False  # degraded by :func:`router_core.training.augment.augment` (training only)

    @property
    def relpath(self) -> str:
        return f"{self.lang}/{self.split}/{self.lang}_{self.split}_{self.index:05d}.flac"

    @property
    def seed(self) -> int:
        """This utterance's augmentation seed (stable across runs and machines)."""
        return zlib.crc32(self.relpath.encode())


def clean_ipa(raw: str) -> str:
    """espeak-ng ``--ipa`` output without ``(en)``/``(fr)`` switch markers, liaison dashes and line breaks."""
    text = _SWITCH.sub("", raw).replace("-", " ").replace("_", " ")
    return " ".join(text.split())


def plan_corpus(langs: list[str], counts: dict[str, int], seed: int) -> list[Utterance]:
    """Which sentence, voice, speed and pitch each utterance gets (deterministic for ``seed``).

    Splits take consecutive slices of each language's shuffled sentences, in ``counts`` order, so they
    are disjoint. Every split but ``train`` must be filled; ``train`` is an upper bound and takes what
    the language's text leaves over (a language with little text still gets full dev and test sets).
    The dev and test sets are spoken by the :data:`SPEAKERS` at moderate speeds and pitches (the sets of
    synth version 2, unchanged). Training then gets wider speeds and pitches, half of it in the
    :data:`OTHER_VOICES`, a share degraded (:data:`AUGMENTED`) and the everyday prose of
    :func:`~router_core.training.text_sources.everyday_sentences` on top. ``dev_unheard`` and
    ``test_unheard`` speak the dev and test sentences in voices no training utterance has
    (:data:`DEV_VOICES`, :data:`TEST_VOICES`). ROT13 ciphertext is left out of every split.
    ``counts["dev_everyday"]`` (optional, 0 when absent) takes that many of the language's written
    everyday dev sentences (:data:`~router_core.training.everyday_dev.DEV_EVERYDAY`), each spoken three
    times (:func:`_everyday_dev_split`).
    """
    plan = []
    everyday = counts.get("dev_everyday", 0)
    counts = {split: n for split, n in counts.items() if split != "dev_everyday"}
    for lang in langs:
        pool = sentences(lang)
        plan += _everyday_dev_split(lang, everyday, seed)
        held = _held_splits(lang, list(pool), counts, seed)
        plan += _training_split(lang, held.get("train", []), {normalize(s) for s in pool}, seed)
        for split, utts in held.items():
            if split != "train":
                plan += utts
        for split, source, voices in (("dev_unheard", "dev", DEV_VOICES), ("test_unheard", "test", TEST_VOICES)):
            rng = random.Random(f"{seed}:{lang}:{split}")
            plan += [Utterance(lang, split, u.index, u.sentence, rng.choice(voices), rng.randint(*EVAL_SPEEDS),
                               rng.randint(*EVAL_PITCHES)) for u in held.get(source, [])]
    return plan


def _everyday_dev_split(lang: str, count: int, seed: int) -> list[Utterance]:
    """The first ``count`` written everyday dev sentences of ``lang``, each spoken by one voice of the
    speaker task and by two of the held-out :data:`DEV_VOICES` (the two kinds of voice the bundle's
    targets are stated for), at the dev and test speeds and pitches."""
    rng = random.Random(f"{seed}:{lang}:dev_everyday")
    out: list[Utterance] = []
    for sentence in DEV_EVERYDAY.get(lang, [])[:count]:
        for voice in (rng.choice(SPEAKERS), *rng.sample(DEV_VOICES, 2)):
            out.append(Utterance(lang, "dev_everyday", len(out), sentence, voice, rng.randint(*EVAL_SPEEDS),
                                 rng.randint(*EVAL_PITCHES)))
    return out


def _held_splits(lang: str, pool: list[str], counts: dict[str, int], seed: int) -> dict[str, list[Utterance]]:
    """Each split's utterances as synth version 2 planned them from ``pool`` (the language's sentences,
    shuffled here: same draws), less ciphertext."""
    rng = random.Random(f"{seed}:{lang}")
    rng.shuffle(pool)
    held = sum(n for split, n in counts.items() if split != "train")
    if len(pool) <= held:
        raise InvalidInputError(f"{lang}: {len(pool)} usable sentences, more than {held} needed; "
                                "is its package installed?")
    ciphered = ciphered_sentences(lang)
    splits: dict[str, list[Utterance]] = {}
    start = 0
    for split, count in counts.items():
        if split == "train":
            count = min(count, len(pool) - held)
        for i, sentence in enumerate(pool[start : start + count]):
            speed, pitch = rng.randint(*EVAL_SPEEDS), rng.randint(*EVAL_PITCHES)
            utt = Utterance(lang, split, i, sentence, rng.choice(SPEAKERS), speed, pitch)
            if sentence not in ciphered:
                splits.setdefault(split, []).append(utt)
        start += count
    return splits


def _training_split(lang: str, planned: list[Utterance], known: set[str], seed: int) -> list[Utterance]:
    """The training utterances: ``planned``'s sentences plus as many everyday ones at most whose
    transcripts are not in ``known`` (every planned sentence's), re-voiced. A written everyday dev
    sentence never trains, should a text package ever ship it."""
    rng = random.Random(f"{seed}:{lang}:train")
    written = {normalize(s) for s in DEV_EVERYDAY.get(lang, [])}
    texts = [u.sentence for u in planned if normalize(u.sentence) not in written]
    excluded = known | written
    texts += [s for s in everyday_sentences(lang) if normalize(s) not in excluded][: len(texts)]
    out = []
    for i, sentence in enumerate(texts):
        voice = rng.choice(SPEAKERS) if rng.random() < 0.5 else rng.choice(OTHER_VOICES)
        out.append(Utterance(lang, "train", i, sentence, voice, rng.randint(*TRAIN_SPEEDS),
                             rng.randint(*TRAIN_PITCHES), rng.random() < AUGMENTED))
    return out


def write_plan(plan: list[Utterance], path: str | Path) -> None:
    """The plan as JSONL, so that a machine without the text packages (a GPU box, say) speaks the same corpus."""
    lines = [json.dumps(asdict(u), ensure_ascii=False) for u in plan]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_plan(path: str | Path) -> list[Utterance]:
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Utterance(**row) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"{path}: not a corpus plan written by `s3router data synth --write-plan` ({exc})"
        ) from exc


def synthesize(utt: Utterance, root: Path) -> dict[str, Any] | None:
    """Speak one utterance into ``root/utt.relpath`` (skipped when this version wrote it); its manifest row."""
    out = root / utt.relpath
    meta = out.with_suffix(".json")
    if meta.is_file() and out.is_file():
        row = json.loads(meta.read_text(encoding="utf-8"))
        if row.get("synth_version") == SYNTH_VERSION and row.get("sentence") == utt.sentence:
            return row
    out.parent.mkdir(parents=True, exist_ok=True)
    voice = f"{VOICES[utt.lang]}+{utt.speaker}"
    # The audio goes to a file and only the phonemes to stdout: with ``--stdout``, espeak-ng writes each
    # clause's IPA into the same stream as it goes, inside the WAV data, which garbles every clause after
    # the first (an odd number of text bytes shifts every later 16-bit sample by one byte).
    wav = out.with_suffix(".espeak.wav")
    cmd = ["espeak-ng", "-v", voice, "-s", str(utt.speed), "-p", str(utt.pitch), "--ipa", "-w", str(wav), utt.sentence]
    try:
        done = subprocess.run(cmd, capture_output=True, check=False)
        if done.returncode != 0 or not wav.is_file():
            return None
        ipa = done.stdout.decode("utf-8", "replace")
        wave = decode_audio(wav.read_bytes(), max_seconds=60.0)
    finally:
        wav.unlink(missing_ok=True)
    samples, applied = wave.numpy(), list[str]()
    if utt.augment:
        from router_core.training.augment import augment

        samples, applied = augment(samples, utt.seed)
    sf.write(out, samples, 16_000, format="FLAC", subtype="PCM_16")
    row = {"audio": utt.relpath, "text": normalize(utt.sentence), "ipa": clean_ipa(ipa), "speaker": utt.speaker,
           "lang": utt.lang, "sentence": utt.sentence, "augment": applied, "synth_version": SYNTH_VERSION}
    meta.write_text(json.dumps(row, ensure_ascii=False), encoding="utf-8")
    return row


def speaks_for_speaker_id(utt: Utterance) -> bool:
    """Whether ``utt`` is an example of the speaker-ID task: one of its :data:`SPEAKERS` (other voices only
    add variety to the corpus), at the dev/test pitches and not degraded, as the task's dev and test sets
    are. An espeak-ng variant is told apart by little more than its formants and pitch: trained on its
    voices at every training pitch and degraded, the speaker mask scored 0.875 on the test set; on their
    pitched-in, clean utterances alone (a sixth as many), 0.907 (``docs/bundled-model.md``)."""
    return utt.speaker in SPEAKERS and EVAL_PITCHES[0] <= utt.pitch <= EVAL_PITCHES[1] and not utt.augment


def _synthesize_args(args: tuple[Utterance, Path]) -> dict[str, Any] | None:
    return synthesize(*args)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes that speak utterances. Spawned, not forked: a forked child of a process whose OpenMP pool
    already ran can deadlock. Each resamples with one torch thread: torch's default, one thread per core
    in every worker, oversubscribed a 16-core box: 16 utterances/s with 13 workers there, 369/s with one
    thread each and 16 workers (the second run also read espeak-ng's data from local disk)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=torch.set_num_threads,
                               initargs=(1,))


def synth_corpus(
    out_dir: str | Path,
    langs: list[str],
    counts: dict[str, int],
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    plan: list[Utterance] | None = None,
) -> dict[str, int]:
    """Synthesize (resumably) and write manifests: ``{lang}_{split}.jsonl``, ``speaker_{split}.jsonl``,
    ``language_{split}.jsonl``. Returns utterances per manifest. ``plan`` (from :func:`read_plan`)
    replaces planning from ``langs``/``counts``/``seed``."""
    from tqdm.auto import tqdm

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if plan is None:
        plan = plan_corpus(langs, counts, seed)
    jobs = [(u, root) for u in plan]
    if workers <= 1:
        rows = [_synthesize_args(job) for job in tqdm(jobs, disable=not progress, desc="espeak-ng")]
    else:
        with worker_pool(workers) as pool:
            rows = list(tqdm(pool.map(_synthesize_args, jobs, chunksize=16), total=len(jobs),
                             disable=not progress, desc="espeak-ng"))
    manifests: dict[str, list[dict[str, Any]]] = {}
    for utt, row in zip(plan, rows, strict=True):
        if row is None:
            continue
        manifests.setdefault(f"{utt.lang}_{utt.split}", []).append(row)
        if speaks_for_speaker_id(utt):
            manifests.setdefault(f"speaker_{utt.split}", []).append({**row, "label": row["speaker"]})
        manifests.setdefault(f"language_{utt.split}", []).append({**row, "label": utt.lang})
    for name, items in manifests.items():
        lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in items)
        (root / f"{name}.jsonl").write_text(lines + "\n", encoding="utf-8")
    return {name: len(items) for name, items in manifests.items()}
