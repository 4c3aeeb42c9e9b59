"""What users meet: the bundled model on everyday sentences outside its training text, in voices of its
training kind and in espeak-ng voices it never heard, and on audio without speech.

Run: ``python -m bench.bench_quality [--write] [--bundle DIR] [--langs fr,en]`` (needs espeak-ng and the
bundled model, or another folder of the same layout; ``--write`` stores the figures under ``held_out`` in
the bundle's ``QUALITY.json``; ``--langs`` measures some languages only, and cannot be written).
Reported: CER per language with the language model (as served) for both voice sets, language-ID accuracy
on the unheard voices (as ``lang=auto`` decides, and the language-ID mask alone), speaker accuracy on the
new sentences (training voices), and how often the speech gate answers silence and noise with an empty
transcript.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jiwer
import numpy as np
import torch

from bench.speech_corpus import RATE, SENTENCES, speak
from bench.timing import machine_name, markdown_table
from router_core.backbone import load_backbone
from router_core.language_id import DecodingLanguageId, identify_languages
from router_core.registry import MaskRegistry
from router_core.router import Router
from router_core.stores import open_store
from router_core.training.synth import SPEAKERS, TEST_VOICES
from router_core.training.text_sources import normalize
from router_core.vad import SpeechDetector

BUNDLE = Path(__file__).resolve().parents[1] / "masks"
SEEN = [("m1", 160), ("f2", 150), ("m4", 175), ("f4", 140)]  # among the speaker task's voices, trained on
HELD_OUT = list(zip(TEST_VOICES, (150, 160, 165, 150, 160, 150), strict=True))  # never trained on
assert {v for v, _ in SEEN} <= set(SPEAKERS)


def _no_speech_clips(seconds: float = 5.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    brown = np.cumsum(rng.normal(0, 1, n))
    return {
        "silence": np.zeros(n), "white noise, quiet": rng.normal(0, 0.01, n),
        "white noise, loud": rng.normal(0, 0.2, n), "brown noise": 0.3 * brown / np.abs(brown).max(),
        "50 Hz hum": 0.3 * np.sin(2 * np.pi * 50 * t), "1 kHz tone": 0.3 * np.sin(2 * np.pi * 1000 * t),
        "clicks": (rng.random(n) < 0.001) * 0.8,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="store the figures in the bundle's QUALITY.json")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="a folder holding backbone/ and registry/")
    parser.add_argument("--langs", help="comma-separated languages to measure (default: all)")
    args = parser.parse_args()
    langs = args.langs.split(",") if args.langs else list(SENTENCES)
    if args.write and set(langs) != set(SENTENCES):
        parser.error("--write stores every language's figures: leave out --langs")
    backbone = load_backbone(str(args.bundle / "backbone"), local_files_only=True)
    registry = MaskRegistry(open_store(str(args.bundle / "registry")), backbone.spec(), budget_bytes=2**30)
    router = Router(backbone, registry)
    held: dict[str, dict] = {}
    rows = []
    lid_right = decided_right = lid_all = speaker_right = speaker_all = 0
    picker = DecodingLanguageId()  # lang=auto as served
    for lang in langs:
        sentences = SENTENCES[lang]
        refs = [normalize(s) for s in sentences]
        cer = {}
        for name, voices in (("seen voices", SEEN), ("held-out voices", HELD_OUT)):
            hyps, waves = [], []
            for voice, speed in voices:
                waves = [torch.from_numpy(speak(s, lang, voice, speed)) for s in sentences]
                hyps += [t.text for t in router.transcribe(waves, [lang] * len(waves))]
                if name == "held-out voices":
                    labels = [c.label for c in router.classify(waves, ["language"] * len(waves))]
                    decided = [label for label, _, _ in identify_languages(router, waves, "language", picker)]
                    lid_right += sum(label == lang for label in labels)
                    decided_right += sum(label == lang for label in decided)
                    lid_all += len(labels)
                else:
                    speakers = [c.label for c in router.classify(waves, ["speaker"] * len(waves))]
                    speaker_right += sum(s == voice for s in speakers)
                    speaker_all += len(speakers)
            cer[name] = jiwer.cer(refs * len(voices), hyps)
        held[lang] = {"cer_everyday_seen_voices": round(cer["seen voices"], 4),
                      "cer_everyday_held_out_voices": round(cer["held-out voices"], 4), "decoder": "beam+lm"}
        rows.append([lang, f"{cer['seen voices']:.3f}", f"{cer['held-out voices']:.3f}"])
    gate = SpeechDetector()
    clips = _no_speech_clips()
    empty = {name: not gate.check(torch.from_numpy(c.astype("float32"))).has_speech for name, c in clips.items()}
    held["language"] = {"accuracy_held_out_voices": round(decided_right / lid_all, 4), "decided_by": "decoding",
                        "mask_alone_accuracy_held_out_voices": round(lid_right / lid_all, 4), "examples": lid_all}
    held["speaker"] = {"accuracy_everyday_sentences": round(speaker_right / speaker_all, 4), "examples": speaker_all}
    held["no_speech"] = {"empty_transcript_rate": round(sum(empty.values()) / len(empty), 4),
                         "clips": {k: bool(v) for k, v in empty.items()}}
    held["voices"] = {"seen": [v for v, _ in SEEN], "held_out": [v for v, _ in HELD_OUT],
                      "sentences_per_language": len(SENTENCES["en"])}
    print(f"bundled model, beam + LM; {machine_name()}")
    print(markdown_table(["language", "CER, everyday, seen voices", "CER, everyday, held-out voices"], rows))
    print(f"language ID on held-out voices: {decided_right}/{lid_all} as lang=auto decides (the mask alone: "
          f"{lid_right}/{lid_all}); speaker on new sentences: "
          f"{speaker_right}/{speaker_all}; empty transcript on no-speech clips: {sum(empty.values())}/{len(empty)} "
          f"{[k for k, v in empty.items() if not v]}")
    if args.write:
        path = args.bundle / "QUALITY.json"
        quality = json.loads(path.read_text())
        quality["held_out"] = held
        path.write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
