"""Speech built from espeak-ng for tests and benchmarks: everyday sentences in the bundled languages, and
long recordings of them with known pauses (so segmentation and per-segment languages can be checked)."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import soundfile as sf
import torch
import torchaudio

RATE = 16_000
SENTENCES = {
    "en": ["The train leaves at nine every morning", "My sister bought a new blue bicycle",
           "We had soup and bread for dinner tonight", "Please close the window before you go out",
           "The children are playing in the garden", "I will call you again after the meeting",
           "This road goes straight to the old bridge", "He reads the newspaper in the kitchen",
           "The shop on the corner sells fresh fruit", "Our neighbours have a very friendly dog"],
    "fr": ["Le train part tous les matins à neuf heures", "Ma soeur a acheté un nouveau vélo bleu",
           "Nous avons mangé de la soupe ce soir", "Ferme la fenêtre avant de sortir",
           "Les enfants jouent dans le jardin", "Je te rappelle après la réunion",
           "Cette route mène au vieux pont", "Il lit le journal dans la cuisine",
           "Le magasin du coin vend des fruits frais", "Nos voisins ont un chien très gentil"],
    "de": ["Der Zug fährt jeden Morgen um neun Uhr", "Meine Schwester hat ein neues blaues Fahrrad",
           "Wir haben heute Abend Suppe gegessen", "Bitte schließ das Fenster bevor du gehst",
           "Die Kinder spielen im Garten", "Ich rufe dich nach dem Treffen wieder an",
           "Diese Straße führt zur alten Brücke", "Er liest die Zeitung in der Küche",
           "Der Laden an der Ecke verkauft frisches Obst", "Unsere Nachbarn haben einen freundlichen Hund"],
    "es": ["El tren sale todas las mañanas a las nueve", "Mi hermana compró una bicicleta azul",
           "Esta noche comimos sopa y pan", "Cierra la ventana antes de salir",
           "Los niños juegan en el jardín", "Te llamo otra vez después de la reunión",
           "Este camino lleva al puente viejo", "Él lee el periódico en la cocina",
           "La tienda de la esquina vende fruta fresca", "Nuestros vecinos tienen un perro muy simpático"],
    "it": ["Il treno parte ogni mattina alle nove", "Mia sorella ha comprato una bicicletta blu",
           "Stasera abbiamo mangiato zuppa e pane", "Chiudi la finestra prima di uscire",
           "I bambini giocano in giardino", "Ti richiamo dopo la riunione",
           "Questa strada porta al vecchio ponte", "Lui legge il giornale in cucina",
           "Il negozio all'angolo vende frutta fresca", "I nostri vicini hanno un cane molto simpatico"],
}
VOICES = [("m1", 160), ("f2", 150), ("m4", 175), ("f4", 140)]


def speak(text: str, lang: str, voice: str, speed: int) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", f"{lang}+{voice}", "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 22050
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, RATE).numpy()


def _trimmed(audio: np.ndarray) -> np.ndarray:
    """Without espeak's leading and trailing near-silence (so the true pauses are known)."""
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1]


Truth = list[tuple[float, float, str, str]]  # (start s, end s, language, text) per sentence


def recording(voices: list[tuple[str, int]], per_language: int) -> tuple[np.ndarray, Truth]:
    """Sentences round-robin over the languages, 0.8-1.6 s pauses of faint noise between them, 3 s of
    silence and 2 s of louder noise in the middle. Returns the audio and (start s, end s, language, text)."""
    rng = np.random.default_rng(0)
    pieces, truth, at = [], [], 0
    order = [(lang, i, v) for v in voices for i in range(per_language) for lang in SENTENCES]
    for n, (lang, i, (voice, speed)) in enumerate(order):
        speech = _trimmed(speak(SENTENCES[lang][i], lang, voice, speed))
        pause = rng.normal(0, 0.002, int(rng.uniform(0.8, 1.6) * RATE)).astype("float32")
        if n == len(order) // 2:
            pause = np.concatenate([pause, np.zeros(3 * RATE, "float32"),
                                    rng.normal(0, 0.05, 2 * RATE).astype("float32"), pause])
        truth.append((at / RATE, (at + len(speech)) / RATE, lang, SENTENCES[lang][i]))
        pieces += [speech, pause]
        at += len(speech) + len(pause)
    return np.concatenate(pieces), truth


def in_a_pause(t: float, truth: Truth, total: float, slack: float = 0.3) -> bool:
    """Whether time ``t`` (s) of a ``total``-second recording lies outside every sentence's speech (each
    sentence shrunk by ``slack`` at both ends), or within ``slack`` of the recording's ends."""
    if t <= slack or t >= total - slack:
        return True
    return all(not (start + slack < t < end - slack) for start, end, _, _ in truth)


def flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="FLAC")
    return buf.getvalue()


